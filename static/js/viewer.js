// The 3D view: a three.js scene showing the model's GLB (one named node per part), with orbit controls,
// preset views, fit, part picking, wireframe and grid. It renders on demand, not in a loop, so an idle page
// costs nothing (software WebGL in CI is slow).
import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';
import { GLTFLoader } from 'three/addons/loaders/GLTFLoader.js';
import { makeGhost } from './viewer-ghost.js';
import { findPart, materialsOf, niceStep, partLabel, partOf, setHighlight, shown } from './viewer-scene.js';

// glTF is Y-up; CadQuery models are Z-up with X forward, Y left. The exporter maps (x, y, z) -> (x, z, -y),
// so "front" (looking at the rover's nose, from +X) is +X here, its right side ("side") is +Z and top is +Y.
const VIEW_DIRECTIONS = {
  front: new THREE.Vector3(1, 0, 0),
  side: new THREE.Vector3(0, 0, 1),
  top: new THREE.Vector3(0, 1, 0.0001),
  iso: new THREE.Vector3(1, 0.8, 1),
  back: new THREE.Vector3(-1, 0, 0),
  left: new THREE.Vector3(0, 0, -1),
  bottom: new THREE.Vector3(0, -1, 0.0001),
};

export class Viewer {
  constructor(container, { onPick = () => {}, onStatus = () => {} } = {}) {
    this.container = container;
    this.onPick = onPick;
    this.onStatus = onStatus;
    this.loads = 0;
    this.model = null;
    this.picked = null;
    this.wireframe = false;
    this.loadToken = 0;
    this.ghost = null; // the target shape, drawn translucent over the model
    this.ghostToken = 0;
    this.ghostVisible = true;
    this.pendingFrame = false;
    // Hooks for the viewer tools (static/js/viewer-*.js): 'model' after each model load, 'pick' on selection;
    // clickTool, when set, takes canvas clicks instead of picking; clipPlanes make clipped surfaces unpickable.
    this.events = new EventTarget();
    this.clickTool = null;
    this.clipPlanes = [];

    // stencil: the section tool caps its cut with it (viewer-section.js)
    this.renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true, stencil: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    this.renderer.outputColorSpace = THREE.SRGBColorSpace;
    this.renderer.domElement.dataset.testid = 'viewer-canvas';
    this.renderer.domElement.id = 'viewer-canvas';
    this.renderer.localClippingEnabled = true;
    container.prepend(this.renderer.domElement);

    this.scene = new THREE.Scene();
    // The page follows the system's dark mode; so does the view's background (read once, at start).
    const dark = window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches;
    this.scene.background = new THREE.Color(dark ? 0x1b2332 : 0xf3f5f8);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x8a8f99, 2.2));
    const key = new THREE.DirectionalLight(0xffffff, 2.0);
    key.position.set(1, 2, 1.5);
    this.scene.add(key);
    const fill = new THREE.DirectionalLight(0xffffff, 0.7);
    fill.position.set(-1.5, 0.5, -1);
    this.scene.add(fill);

    this.perspCamera = new THREE.PerspectiveCamera(40, 1, 0.1, 10000);
    this.perspCamera.position.set(300, 250, 300);
    this.orthoCamera = new THREE.OrthographicCamera(-1, 1, 1, -1, 0.1, 10000);
    this.orthoHalf = 100; // half the orthographic view's height at zoom 1, in scene units
    this.camera = this.perspCamera;
    this.afterRender = []; // drawn over each frame (the axes triad)
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.addEventListener('change', () => this.requestRender());

    this.grid = null;
    this.setGrid(500, true);

    this.loader = new GLTFLoader();
    this.raycaster = new THREE.Raycaster();
    this.pointerDown = null;
    const canvas = this.renderer.domElement;
    canvas.addEventListener('pointerdown', (e) => { this.pointerDown = { x: e.clientX, y: e.clientY }; });
    canvas.addEventListener('pointerup', (e) => this.handleClick(e));

    new ResizeObserver(() => this.resize()).observe(container);
    this.resize();
  }

  resize() {
    const { clientWidth: w, clientHeight: h } = this.container;
    if (!w || !h) return;
    this.renderer.setSize(w, h, false);
    this.perspCamera.aspect = w / h;
    this.perspCamera.updateProjectionMatrix();
    this.updateFrustum();
    this.requestRender();
  }

  requestRender() {
    if (this.pendingFrame) return;
    this.pendingFrame = true;
    requestAnimationFrame(() => {
      this.pendingFrame = false;
      this.renderer.render(this.scene, this.camera);
      for (const draw of this.afterRender) draw(this.renderer, this.camera);
    });
  }

  // Perspective or orthographic (parallel) projection, keeping the view: the orthographic frustum shows at the
  // orbit target what the perspective camera shows there, and back.
  setProjection(ortho) {
    const from = this.camera;
    const to = ortho ? this.orthoCamera : this.perspCamera;
    if (from === to) return;
    const target = this.controls.target;
    const tan = Math.tan(THREE.MathUtils.degToRad(this.perspCamera.fov) / 2);
    const offset = from.position.clone().sub(target);
    if (ortho) {
      this.orthoHalf = offset.length() * tan;
      to.zoom = 1;
      to.position.copy(from.position);
    } else {
      to.position.copy(target).addScaledVector(offset.normalize(), this.orthoHalf / from.zoom / tan);
    }
    to.near = from.near;
    to.far = from.far;
    to.quaternion.copy(from.quaternion);
    this.camera = to;
    this.controls.object = to;
    this.updateFrustum();
    this.controls.update();
    to.updateMatrixWorld();
    this.container.dataset.projection = ortho ? 'orthographic' : 'perspective';
    this.requestRender();
  }

  updateFrustum() {
    const [c, h, a] = [this.orthoCamera, this.orthoHalf, this.perspCamera.aspect];
    Object.assign(c, { left: -h * a, right: h * a, top: h, bottom: -h }).updateProjectionMatrix();
  }

  setGrid(size, visible) {
    const wasVisible = this.grid ? this.grid.visible : visible;
    if (this.grid) {
      this.scene.remove(this.grid);
      this.grid.geometry.dispose();
      this.grid.material.dispose();
    }
    const step = niceStep(size / 20);
    const divisions = Math.max(2, Math.round(size / step));
    this.grid = new THREE.GridHelper(divisions * step, divisions, 0x9aa3af, 0xd5d9e0);
    this.grid.visible = visible ?? wasVisible;
    this.scene.add(this.grid);
    this.gridStep = step;
    this.requestRender();
  }

  showGrid(visible) {
    this.grid.visible = visible;
    this.requestRender();
  }

  setWireframe(on) {
    this.wireframe = on;
    this.forEachMesh((mesh) => {
      for (const m of materialsOf(mesh)) m.wireframe = on;
    });
    this.requestRender();
  }

  forEachMesh(fn) {
    if (this.model) this.model.traverse((o) => { if (o.isMesh && !o.userData.overlay) fn(o); });
  }

  // Fetch and show a GLB. Returns a promise that resolves once the new model is on screen; a newer call
  // supersedes an older one still in flight.
  async load(url, { fit = false } = {}) {
    const token = ++this.loadToken;
    this.container.dataset.loading = 'true';
    this.onStatus('Loading model…');
    try {
      const response = await fetch(url, { cache: 'no-store' });
      if (!response.ok) {
        let message = `HTTP ${response.status}`;
        try { message = (await response.json()).message || message; } catch { /* not JSON */ }
        throw new Error(message);
      }
      const buffer = await response.arrayBuffer();
      const gltf = await this.loader.parseAsync(buffer, '');
      if (token !== this.loadToken) return false;
      this.replaceModel(gltf.scene, fit || !this.hasFitted);
      this.loads += 1;
      this.container.dataset.glbLoads = String(this.loads);
      this.container.dataset.shownUrl = url; // which state is on screen (tests wait on it)
      this.onStatus('');
      return true;
    } catch (err) {
      if (token === this.loadToken) this.onStatus(`Model could not be shown: ${err.message}`, true);
      return false;
    } finally {
      if (token === this.loadToken) this.container.dataset.loading = 'false';
    }
  }

  replaceModel(root, fit) {
    const pickedName = this.picked ? this.picked.name : null;
    if (this.model) {
      this.scene.remove(this.model);
      this.model.traverse((o) => {
        if (o.geometry) o.geometry.dispose();
        for (const m of materialsOf(o)) m.dispose();
      });
    }
    this.model = root;
    this.forEachMesh((mesh) => {
      // Each mesh gets its own material so highlighting one part never tints another sharing it.
      mesh.material = Array.isArray(mesh.material) ? mesh.material.map((m) => m.clone()) : mesh.material.clone();
      for (const m of materialsOf(mesh)) {
        m.side = THREE.DoubleSide;
        m.wireframe = this.wireframe;
        if ('metalness' in m) m.metalness = Math.min(m.metalness, 0.2);
        if ('roughness' in m) m.roughness = Math.max(m.roughness, 0.55);
      }
    });
    this.scene.add(root);
    const box = new THREE.Box3().setFromObject(root);
    this.bounds = box;
    if (!box.isEmpty()) {
      const size = box.getSize(new THREE.Vector3());
      this.setGrid(Math.max(size.x, size.z) * 2.5, undefined);
      this.grid.position.y = box.min.y;
    }
    this.picked = null;
    if (pickedName) {
      const again = findPart(root, pickedName);
      if (again) this.select(again, false);
      else this.onPick(null);
    }
    if (fit) {
      this.hasFitted = true;
      this.setView('iso');
    }
    this.events.dispatchEvent(new Event('model'));
    this.requestRender();
  }

  // The target as a see-through ghost (GET /api/target.glb: same axes and units as the model's GLB).
  async loadGhost(url) {
    const token = ++this.ghostToken;
    try {
      const response = await fetch(url, { cache: 'no-store' });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const gltf = await this.loader.parseAsync(await response.arrayBuffer(), '');
      if (token !== this.ghostToken) return false;
      this.removeGhost();
      this.ghost = makeGhost(gltf.scene);
      this.ghost.visible = this.ghostVisible;
      this.scene.add(this.ghost);
      this.container.dataset.ghost = this.ghostVisible ? 'shown' : 'hidden';
      this.container.dataset.ghostUrl = url;
      this.requestRender();
      return true;
    } catch (err) {
      if (token === this.ghostToken) this.onStatus(`Target could not be shown: ${err.message}`, true);
      return false;
    }
  }

  clearGhost() {
    this.ghostToken += 1; // a ghost still loading is dropped too
    this.removeGhost();
    this.requestRender();
  }

  removeGhost() {
    if (!this.ghost) return;
    this.scene.remove(this.ghost);
    this.ghost.traverse((o) => {
      if (o.geometry) o.geometry.dispose();
      for (const m of materialsOf(o)) m.dispose();
    });
    this.ghost = null;
    this.container.dataset.ghost = 'none';
    delete this.container.dataset.ghostUrl;
  }

  showGhost(visible) {
    this.ghostVisible = visible;
    if (this.ghost) {
      this.ghost.visible = visible;
      this.container.dataset.ghost = visible ? 'shown' : 'hidden';
    }
    this.requestRender();
  }

  fit(direction = null) {
    if (!this.bounds || this.bounds.isEmpty()) return;
    const box = this.bounds.clone();
    if (this.ghost && this.ghost.visible) box.union(new THREE.Box3().setFromObject(this.ghost));
    const sphere = box.getBoundingSphere(new THREE.Sphere());
    const dir = (direction || this.camera.position.clone().sub(this.controls.target)).clone().normalize();
    const fov = THREE.MathUtils.degToRad(this.perspCamera.fov);
    const fitFov = Math.min(fov, 2 * Math.atan(Math.tan(fov / 2) * this.perspCamera.aspect));
    const distance = (sphere.radius / Math.sin(fitFov / 2)) * 1.08;
    this.controls.target.copy(sphere.center);
    this.camera.position.copy(sphere.center).addScaledVector(dir, distance);
    // Clipping planes as shares of the distance, never absolute lengths: a floor of 0.01 scene units (10 mm)
    // put the near plane behind parts under ~5 mm and left the view blank.
    this.camera.near = distance / 1000;
    this.camera.far = distance * 100;
    if (this.camera.isOrthographicCamera) {
      this.orthoHalf = distance * Math.tan(fov / 2);
      this.camera.zoom = 1;
      this.updateFrustum();
    }
    this.camera.updateProjectionMatrix();
    this.controls.update();
    this.camera.updateMatrixWorld(); // picking before the next frame must see the new pose
    this.requestRender();
  }

  setView(name) {
    const dir = VIEW_DIRECTIONS[name];
    if (!dir) return;
    this.currentView = name;
    this.fit(dir);
  }

  handleClick(event) {
    const start = this.pointerDown;
    this.pointerDown = null;
    if (!start || event.button !== 0 || !this.model) return;
    if (Math.hypot(event.clientX - start.x, event.clientY - start.y) > 4) return; // a drag, not a click
    const rect = this.renderer.domElement.getBoundingClientRect();
    const ndc = new THREE.Vector2(
      ((event.clientX - rect.left) / rect.width) * 2 - 1,
      -((event.clientY - rect.top) / rect.height) * 2 + 1,
    );
    const hit = this.pickAt(ndc);
    if (this.clickTool) {
      this.clickTool(hit, event);
      return;
    }
    if (!hit) {
      this.select(null);
      return;
    }
    this.select(hit.part);
  }

  // The nearest visible, unclipped model surface under a canvas point (normalised device coordinates), with its
  // part; overlays (edges, section caps) and hidden parts are skipped.
  pickAt(ndc) {
    if (!this.model) return null;
    this.raycaster.setFromCamera(ndc, this.camera);
    for (const hit of this.raycaster.intersectObject(this.model, true)) {
      if (!hit.object.isMesh || hit.object.userData.overlay || !shown(hit.object)) continue;
      if (this.clipPlanes.some((plane) => plane.distanceToPoint(hit.point) < 0)) continue;
      const part = partOf(hit.object, this.model);
      // A first hit on an inner (back) face means the ray came in through the section cut: the visible surface
      // is the section face, where the ray crosses the plane.
      const normal = hit.face && hit.face.normal.clone().transformDirection(hit.object.matrixWorld);
      const ray = this.raycaster.ray;
      const cut = normal && normal.dot(ray.direction) > 0 && this.clipPlanes.length
        && ray.intersectPlane(this.clipPlanes[0], new THREE.Vector3());
      const distance = cut ? cut.distanceTo(ray.origin) : Infinity;
      return distance <= hit.distance ? { ...hit, point: cut, distance, section: true, part } : { ...hit, part };
    }
    return null;
  }

  select(part, notify = true) {
    if (this.picked) setHighlight(this.picked, false);
    this.picked = part;
    if (part) setHighlight(part, true);
    this.requestRender();
    if (notify || !part) this.onPick(part ? part.name : null, part ? partLabel(part) : null);
    this.events.dispatchEvent(new CustomEvent('pick', { detail: part }));
  }

  // Millimetres per scene unit: the GLB names its units on the root node (cad.export writes metres).
  mmPerUnit() {
    let units = null;
    if (this.model) this.model.traverse((o) => { if (!units && o.userData.units) units = o.userData.units; });
    return units === 'mm' ? 1 : 1000;
  }

  // The model's parts (named nodes holding meshes), in file order.
  parts() {
    const parts = new Set();
    this.forEachMesh((mesh) => {
      if (mesh.userData.overlay) return;
      const p = partOf(mesh, this.model);
      if (p && p.name) parts.add(p);
    });
    return [...parts];
  }

  partNames() {
    return this.parts().map((p) => p.name);
  }
}
