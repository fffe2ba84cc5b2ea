// The axes triad: the model's X, Y and Z (Z up, as in the parameters and the measurements) drawn in the
// view's bottom-left corner, turning with the camera. A second tiny scene rendered after the main one into a
// corner viewport (Viewer.afterRender), so it costs a few hundred triangles a frame.
import * as THREE from 'three';

const SIZE = 100; // CSS pixels
// Model axis -> scene direction (glTF is Y up: model Y is scene -Z), colour, label.
const AXES = [
  [new THREE.Vector3(1, 0, 0), 0xe53935, 'X'],
  [new THREE.Vector3(0, 0, -1), 0x43a047, 'Y'],
  [new THREE.Vector3(0, 1, 0), 0x1e88e5, 'Z'],
];

export class AxesTriad {
  constructor(viewer) {
    this.viewer = viewer;
    this.visible = true;
    this.scene = new THREE.Scene();
    this.camera = new THREE.OrthographicCamera(-1.45, 1.45, 1.45, -1.45, 0.1, 10);
    for (const [dir, colour, label] of AXES) {
      const material = new THREE.MeshBasicMaterial({ color: colour, depthTest: false });
      const shaft = new THREE.Mesh(new THREE.CylinderGeometry(0.045, 0.045, 0.8, 8), material);
      const tip = new THREE.Mesh(new THREE.ConeGeometry(0.12, 0.3, 12), material);
      shaft.position.y = 0.4;
      tip.position.y = 0.95;
      const arrow = new THREE.Group();
      arrow.add(shaft, tip);
      arrow.quaternion.setFromUnitVectors(new THREE.Vector3(0, 1, 0), dir);
      const sprite = new THREE.Sprite(new THREE.SpriteMaterial({ map: letter(label, colour), depthTest: false }));
      sprite.position.copy(dir).multiplyScalar(1.22);
      sprite.scale.setScalar(0.45);
      this.scene.add(arrow, sprite);
    }
    viewer.afterRender.push((renderer, camera) => this.draw(renderer, camera));
    viewer.container.dataset.triad = 'shown';
  }

  show(on) {
    this.visible = on;
    this.viewer.container.dataset.triad = on ? 'shown' : 'hidden';
    this.viewer.requestRender();
  }

  draw(renderer, camera) {
    if (!this.visible) return;
    this.camera.position.set(0, 0, 4).applyQuaternion(camera.quaternion);
    this.camera.quaternion.copy(camera.quaternion);
    const size = renderer.getSize(new THREE.Vector2());
    const s = Math.min(SIZE, size.x / 4, size.y / 4);
    const autoClear = renderer.autoClear;
    renderer.autoClear = false;
    renderer.setScissorTest(true);
    renderer.setScissor(4, 4, s, s);
    renderer.setViewport(4, 4, s, s);
    renderer.clearDepth();
    renderer.render(this.scene, this.camera);
    renderer.setScissorTest(false);
    renderer.setViewport(0, 0, size.x, size.y);
    renderer.autoClear = autoClear;
  }
}

function letter(text, colour) {
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 64;
  const g = canvas.getContext('2d');
  g.font = 'bold 44px system-ui, sans-serif';
  g.textAlign = 'center';
  g.textBaseline = 'middle';
  g.fillStyle = `#${new THREE.Color(colour).getHexString()}`;
  g.fillText(text, 32, 34);
  const texture = new THREE.CanvasTexture(canvas);
  texture.colorSpace = THREE.SRGBColorSpace;
  return texture;
}
