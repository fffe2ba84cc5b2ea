// Feature edges and the section plane.
// Edges: THREE.EdgesGeometry of each part's mesh (edges where faces meet at more than the threshold angle),
// drawn as dark lines over the shaded model. Section: one clipping plane across the model's X, Y or Z axis
// (model axes, Z up) at the slider's position; what lies beyond it is cut away and the cut is capped with a flat
// colour. The cap is the stencil method (three.js' clipping-stencil example): each part's clipped back faces add
// one to the stencil and its front faces take one away, so the stencil is non-zero exactly where the plane lies
// inside a solid; a plane drawn where it is non-zero is the section face.
import * as THREE from 'three';
import { $ } from './dom.js';
import { materialsOf } from './viewer-scene.js';
import { formatSignificant } from './viewer-units.js';

// Model axis -> direction in the scene (glTF is Y up: model X -> X, model Y -> -Z, model Z -> Y).
const AXES = { x: new THREE.Vector3(1, 0, 0), y: new THREE.Vector3(0, 0, -1), z: new THREE.Vector3(0, 1, 0) };
const EDGE_COLOUR = 0x111827;
const CAP_COLOUR = 0xe11d48;

export class SectionTool {
  constructor(viewer) {
    this.viewer = viewer;
    this.plane = new THREE.Plane(new THREE.Vector3(-1, 0, 0), 0);
    this.edgeMaterial = new THREE.LineBasicMaterial({ color: EDGE_COLOUR });
    const stencilPass = (side, op) => new THREE.MeshBasicMaterial({
      side, depthWrite: false, depthTest: false, colorWrite: false, stencilWrite: true,
      stencilFunc: THREE.AlwaysStencilFunc, stencilFail: op, stencilZFail: op, stencilZPass: op,
    });
    this.backPass = stencilPass(THREE.BackSide, THREE.IncrementWrapStencilOp);
    this.frontPass = stencilPass(THREE.FrontSide, THREE.DecrementWrapStencilOp);
    const reset = THREE.ReplaceStencilOp; // drawing the cap sets the stencil back to 0 for the next frame
    this.capMaterial = new THREE.MeshBasicMaterial({
      color: CAP_COLOUR, side: THREE.DoubleSide, stencilWrite: true, stencilRef: 0,
      stencilFunc: THREE.NotEqualStencilFunc, stencilFail: reset, stencilZFail: reset, stencilZPass: reset,
    });
    this.cap = new THREE.Mesh(new THREE.PlaneGeometry(1, 1), this.capMaterial);
    this.cap.name = 'section-cap';
    this.cap.renderOrder = 2; // after the parts (0) and the stencil passes (1)
    this.cap.visible = false;
    viewer.scene.add(this.cap);
    this.edgesOn = false;
    this.axis = '';
    $('toggle-edges').addEventListener('change', (e) => this.setEdges(e.target.checked));
    $('edges-angle').addEventListener('change', () => { if (this.edgesOn) this.setEdges(true); });
    $('section-axis').addEventListener('change', (e) => this.setAxis(e.target.value));
    $('section-offset').addEventListener('input', () => this.update());
    $('section-flip').addEventListener('change', () => this.update());
    viewer.events.addEventListener('model', () => {
      if (this.edgesOn) this.addEdges();
      this.update();
    });
  }

  meshes() {
    const out = [];
    if (this.viewer.model) this.viewer.model.traverse((o) => { if (o.isMesh && !o.userData.overlay) out.push(o); });
    return out;
  }

  // --- edges ---
  setEdges(on) {
    this.edgesOn = on;
    $('toggle-edges').checked = on;
    this.removeOverlay('edges');
    if (on) this.addEdges();
    this.update();
  }

  angle() {
    const value = Number($('edges-angle').value);
    return Number.isFinite(value) ? Math.min(Math.max(value, 1), 90) : 30;
  }

  addEdges() {
    this.removeOverlay('edges');
    let count = 0;
    for (const mesh of this.meshes()) {
      const lines = new THREE.LineSegments(new THREE.EdgesGeometry(mesh.geometry, this.angle()), this.edgeMaterial);
      lines.userData = { overlay: true, edges: true };
      lines.renderOrder = 1;
      mesh.add(lines);
      count += lines.geometry.attributes.position.count / 2;
    }
    this.viewer.container.dataset.edges = String(count);
    this.viewer.requestRender();
  }

  removeOverlay(kind) {
    if (!this.viewer.model) return;
    const doomed = [];
    this.viewer.model.traverse((o) => { if (o.userData[kind]) doomed.push(o); });
    for (const o of doomed) {
      o.removeFromParent();
      if (kind === 'edges') o.geometry.dispose(); // caps share their mesh's geometry
    }
    if (kind === 'edges') delete this.viewer.container.dataset.edges;
  }

  // --- section ---
  setAxis(axis) {
    this.axis = AXES[axis] ? axis : '';
    $('section-axis').value = this.axis;
    $('section-offset').disabled = !this.axis;
    $('section-flip').disabled = !this.axis;
    this.update();
  }

  // The model's extent along the chosen axis, in scene units: [min, max] of axis·p over the bounds' corners.
  range() {
    const box = this.viewer.bounds;
    if (!box || box.isEmpty() || !this.axis) return null;
    const a = AXES[this.axis];
    const values = [box.min, box.max].flatMap((p) => [a.x * p.x + a.y * p.y + a.z * p.z]);
    return [Math.min(...values), Math.max(...values)];
  }

  update() {
    const range = this.range();
    const on = Boolean(range);
    const planes = on ? [this.plane] : [];
    const container = this.viewer.container;
    if (on) {
      const [lo, hi] = range;
      const c = lo + (hi - lo) * (Number($('section-offset').value) / 1000);
      const a = AXES[this.axis];
      const flip = $('section-flip').checked;
      // Keep axis·p <= c (flipped: >= c); three.js clips where normal·p + constant < 0.
      if (flip) this.plane.set(a.clone(), -c);
      else this.plane.set(a.clone().negate(), c);
      const k = this.viewer.mmPerUnit();
      const mm = c * k;
      // to the precision of the model's extent along the axis (significant digits: any scale)
      const text = formatSignificant(mm, { reference: (hi - lo) * k || null });
      $('section-value').textContent = `${this.axis.toUpperCase()} = ${text} mm`;
      container.dataset.section = this.axis;
      container.dataset.sectionMm = String(mm);
    } else {
      $('section-value').textContent = '';
      delete container.dataset.section;
      delete container.dataset.sectionMm;
    }
    this.viewer.clipPlanes = planes;
    const capped = on ? this.viewer.model : null; // the caps are made once per model and section on/off
    if (capped !== this.capped) {
      this.removeOverlay('cap');
      for (const mesh of this.meshes()) {
        for (const m of materialsOf(mesh)) m.clippingPlanes = planes;
        if (!on) continue;
        for (const material of [this.backPass, this.frontPass]) {
          const pass = new THREE.Mesh(mesh.geometry, material);
          pass.userData = { overlay: true, cap: true };
          pass.renderOrder = 1;
          mesh.add(pass);
        }
      }
      this.capped = capped;
    }
    this.edgeMaterial.clippingPlanes = planes;
    this.backPass.clippingPlanes = planes;
    this.frontPass.clippingPlanes = planes;
    this.placeCap(on);
    this.viewer.requestRender();
  }

  // The cap plane: on the section plane, centred on the model, larger than it.
  placeCap(on) {
    this.cap.visible = on;
    if (!on) return;
    const box = this.viewer.bounds;
    const centre = box.getCenter(new THREE.Vector3());
    this.plane.projectPoint(centre, this.cap.position);
    this.cap.quaternion.setFromUnitVectors(new THREE.Vector3(0, 0, 1), this.plane.normal);
    this.cap.scale.setScalar(box.getSize(new THREE.Vector3()).length() * 1.5);
    this.cap.updateMatrixWorld();
  }
}
