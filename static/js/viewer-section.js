// Edges and the section plane.
// Edges: the model's own B-rep edges where the GLB carries them (cad.export: a LINES child of each part's node,
// extras {optim: 'brep_edges', edges: N}), so they follow their part's hide/show/isolate; for a GLB without them
// (an older or foreign file) THREE.EdgesGeometry of each part's mesh (where faces meet at more than the threshold
// angle). Both are dark lines over the shaded model, clipped by the section like the faces; the faces are pushed
// back a little in depth (polygon offset) so lines lying on them win. Section: one clipping plane across the model's X, Y or Z axis
// (model axes, Z up) at the slider's position; what lies beyond it is cut away and the cut is capped with a flat
// colour. The cap is the stencil method (three.js' clipping-stencil example): each part's clipped back faces add
// one to the stencil and its front faces take one away, so the stencil is non-zero exactly where the plane lies
// inside a solid; a plane drawn where it is non-zero is the section face.
import * as THREE from 'three';
import { $ } from './dom.js';
import { materialsOf, shown } from './viewer-scene.js';
import { formatSignificant } from './viewer-units.js';

// Model axis -> direction in the scene (glTF is Y up: model X -> X, model Y -> -Z, model Z -> Y).
const AXES = { x: new THREE.Vector3(1, 0, 0), y: new THREE.Vector3(0, 0, -1), z: new THREE.Vector3(0, 1, 0) };
const EDGE_COLOUR = 0x111827;
const CAP_COLOUR = 0xe11d48;

export function isBrepEdges(object) {
  return Boolean(object.isLineSegments && object.userData.optim === 'brep_edges');
}

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
      this.adoptBrepEdges();
      if (this.edgesOn) this.addEdges();
      this.update();
    });
    viewer.events.addEventListener('visibility', () => this.countShown()); // the part tree hid or showed a part
  }

  // The B-rep edge lines of the model on screen (none for a GLB without them).
  brepLines() {
    const out = [];
    if (this.viewer.model) this.viewer.model.traverse((o) => { if (isBrepEdges(o)) out.push(o); });
    return out;
  }

  // A new model's B-rep edges take the tool's material (clipped with the section) and stay hidden until wanted.
  adoptBrepEdges() {
    const lines = this.brepLines();
    for (const object of lines) {
      for (const m of materialsOf(object)) m.dispose();
      object.material = this.edgeMaterial;
      object.renderOrder = 1;
      object.visible = false;
    }
    if (!lines.length) return;
    for (const mesh of this.meshes()) {
      for (const m of materialsOf(mesh)) Object.assign(m, { polygonOffset: true, polygonOffsetFactor: 1, polygonOffsetUnits: 1 });
    }
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
    this.removeEdges();
    if (on) this.addEdges();
    this.update();
  }

  angle() {
    const value = Number($('edges-angle').value);
    return Number.isFinite(value) ? Math.min(Math.max(value, 1), 90) : 30;
  }

  // data-edges: B-rep edges drawn (or crease segments, data-edges-source=mesh); data-edge-objects: line objects;
  // data-edges-shown: of data-edges, those whose part is visible.
  addEdges() {
    this.removeEdges();
    const brep = this.brepLines();
    const { dataset } = this.viewer.container;
    let count = 0;
    for (const lines of brep) {
      lines.visible = true;
      count += lines.userData.edges || 0;
    }
    if (!brep.length) {
      for (const mesh of this.meshes()) {
        const lines = new THREE.LineSegments(new THREE.EdgesGeometry(mesh.geometry, this.angle()), this.edgeMaterial);
        lines.userData = { overlay: true, crease: true, segments: lines.geometry.attributes.position.count / 2 };
        lines.renderOrder = 1;
        mesh.add(lines);
        count += lines.userData.segments;
      }
    }
    $('edges-angle').disabled = brep.length > 0; // B-rep edges are the model's own: no threshold to choose
    Object.assign(dataset, { edges: String(count), edgesSource: brep.length ? 'brep' : 'mesh',
                             edgeObjects: String(brep.length || this.meshes().length) });
    this.countShown();
    this.viewer.requestRender();
  }

  countShown() {
    if (!this.edgesOn || !this.viewer.model) return;
    let count = 0;
    this.viewer.model.traverse((o) => {
      if (o.isLineSegments && shown(o)) count += isBrepEdges(o) ? o.userData.edges || 0 : o.userData.segments || 0;
    });
    this.viewer.container.dataset.edgesShown = String(count);
  }

  removeEdges() {
    this.removeOverlay('crease');
    for (const lines of this.brepLines()) lines.visible = false;
    const { dataset } = this.viewer.container;
    for (const key of ['edges', 'edgesSource', 'edgeObjects', 'edgesShown']) delete dataset[key];
    $('edges-angle').disabled = false;
  }

  removeOverlay(kind) {
    if (!this.viewer.model) return;
    const doomed = [];
    this.viewer.model.traverse((o) => { if (o.userData[kind] === true) doomed.push(o); });
    for (const o of doomed) {
      o.removeFromParent();
      if (kind === 'crease') o.geometry.dispose(); // caps share their mesh's geometry
    }
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
