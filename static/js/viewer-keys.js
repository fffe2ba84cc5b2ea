// Keyboard control of the 3D view while the canvas has focus (Tab to it, or click it): arrow keys orbit
// (15° a press), Shift+arrows pan, + / - zoom, Home or 0 fits the model. Page scrolling keys are kept from
// scrolling the page only while the canvas is focused.
const STEP = Math.PI / 12;
const ZOOM = 1.2;

export function bindKeyboardOrbit(viewer) {
  const canvas = viewer.renderer.domElement;
  const controls = viewer.controls;
  canvas.tabIndex = 0;
  canvas.setAttribute('role', 'application'); // its keys go to the view, not to a screen reader
  canvas.setAttribute('aria-roledescription', '3D view');
  canvas.setAttribute('aria-label',
    '3D view of the model. Arrow keys rotate, Shift+arrows pan, plus and minus zoom, Home fits the model.');
  canvas.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const pan = e.shiftKey;
    const panStep = Math.max(canvas.clientHeight, 1) / 12; // pixels, as if dragged
    let handled = true;
    switch (e.key) {
      case 'ArrowLeft': if (pan) controls.pan(panStep, 0); else controls.rotateLeft(STEP); break;
      case 'ArrowRight': if (pan) controls.pan(-panStep, 0); else controls.rotateLeft(-STEP); break;
      case 'ArrowUp': if (pan) controls.pan(0, panStep); else controls.rotateUp(STEP); break;
      case 'ArrowDown': if (pan) controls.pan(0, -panStep); else controls.rotateUp(-STEP); break;
      // OrbitControls' dollyIn scales the camera distance by its argument (the wheel passes < 1 to zoom in).
      case '+': case '=': controls.dollyIn(1 / ZOOM); break;
      case '-': case '_': controls.dollyIn(ZOOM); break;
      case 'Home': case '0': viewer.fit(); break;
      default: handled = false;
    }
    if (!handled) return;
    e.preventDefault();
    viewer.camera.updateMatrixWorld();
    viewer.requestRender();
  });
}
