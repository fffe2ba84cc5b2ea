// Feature edges and the section plane.
// Edges: THREE.EdgesGeometry of each part's mesh (edges where faces meet at more than the threshold angle),
// drawn as dark lines over the shaded model. Section: one clipping plane across the model's X, Y or Z axis
// (model axes, Z up) at the slider's position; what lies beyond it is cut away and the cut is capped with a flat
// colour (the solid's inner faces, seen through the opening, drawn unlit).
import * as THREE from 'three';
import { $ } from './dom.js';
import { materialsOf } from './viewer-scene.js';

// Model axis -> direction in the scene (glTF is Y up: model X -> X, model Y -> -Z, model Z -> Y).
const AXES = { x: new THREE.Vector3(1, 0, 0), y: new THREE.Vector3(0, 0, -1), z: new THREE.Vector3(0, 1, 0) };
const EDGE_COLOUR = 0x111827;
const CAP_COLOUR = 0xe11d48;

export class SectionTool {
  constructor(viewer) {
    this.viewer = viewer;
    this.plane = new THREE.Plane(new THREE.Vector3(-1, 0, 0), 0);
    this.edgeMaterial = new THREE.LineBasicMaterial({ color: EDGE_COLOUR });
    // Drawn after the part (renderOrder) at the same depth as the part's own back faces, which it replaces: no
    // polygon offset, which would bleed the cap colour along every silhouette.
    this.capMaterial = new THREE.MeshBasicMaterial({ color: CAP_COLOUR, side: THREE.BackSide });
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
      const mm = c * this.viewer.mmPerUnit();
      $('section-value').textContent = `${this.axis.toUpperCase()} = ${mm.toFixed(1)} mm`;
      container.dataset.section = this.axis;
      container.dataset.sectionMm = mm.toFixed(3);
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
        const cap = new THREE.Mesh(mesh.geometry, this.capMaterial);
        cap.userData = { overlay: true, cap: true };
        cap.renderOrder = 1;
        mesh.add(cap);
      }
      this.capped = capped;
    }
    this.edgeMaterial.clippingPlanes = planes;
    this.capMaterial.clippingPlanes = planes;
    this.viewer.requestRender();
  }
}
