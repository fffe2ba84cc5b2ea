// Measure: with the tool on, a click on a part shows its bounding-box size in mm and drops a point on the
// surface; two points give their distance (a line between two markers) and the angle between the faces they lie
// on. A third click starts a new pair;
// Escape (or turning the tool off) clears. Sizes are in the model's axes (X forward, Y left, Z up).
import * as THREE from 'three';
import { $, el, isTypingTarget } from './dom.js';
import { partLabel } from './viewer-scene.js';
import { formatSignificant } from './viewer-units.js';

const POINT_COLOUR = 0xdb2777;
const LINE_COLOUR = 0xdb2777;

export class MeasureTool {
  constructor(viewer) {
    this.viewer = viewer;
    this.button = $('tool-measure');
    this.panel = $('measure-panel');
    this.active = false;
    this.points = [];
    this.normals = []; // the picked faces' normals (scene axes), for the angle between them
    this.group = new THREE.Group();
    this.group.name = 'measure-overlay';
    this.group.renderOrder = 10;
    viewer.scene.add(this.group);
    this.pointMaterial = new THREE.MeshBasicMaterial({ color: POINT_COLOUR, depthTest: false, transparent: true });
    this.lineMaterial = new THREE.LineBasicMaterial({ color: LINE_COLOUR, depthTest: false, transparent: true });
    this.button.addEventListener('click', () => this.setActive(!this.active));
    document.addEventListener('keydown', (e) => {
      if (e.key !== 'Escape' || isTypingTarget(e.target)) return;
      if (this.points.length || this.partInfo) this.clear();
      else if (this.active) this.setActive(false);
    });
    viewer.events.addEventListener('model', () => this.clear());
    // A part selected any way (a click, or the part tree by keyboard) shows its size while the tool is on.
    viewer.events.addEventListener('pick', (e) => {
      if (!this.active) return;
      this.partInfo = e.detail ? this.sizeOf(e.detail) : null;
      this.render();
    });
  }

  setActive(on) {
    this.active = on;
    this.button.setAttribute('aria-pressed', String(on));
    this.viewer.container.dataset.tool = on ? 'measure' : '';
    this.viewer.clickTool = on ? (hit) => this.click(hit) : null;
    if (!on) {
      this.clear();
      return;
    }
    this.partInfo = this.viewer.picked ? this.sizeOf(this.viewer.picked) : null;
    this.render();
  }

  // A part's bounding box in mm, model axes.
  sizeOf(part) {
    const size = new THREE.Box3().setFromObject(part).getSize(new THREE.Vector3());
    const k = this.viewer.mmPerUnit();
    return { name: partLabel(part), x: size.x * k, y: size.z * k, z: size.y * k };
  }

  // Scene (glTF, Y up) -> model axes (Z up), in mm.
  toModel(v) {
    const k = this.viewer.mmPerUnit();
    return { x: v.x * k, y: -v.z * k, z: v.y * k };
  }

  click(hit) {
    if (!hit) {
      this.clear();
      return;
    }
    this.viewer.select(hit.part); // its size comes with the 'pick' event
    if (this.points.length >= 2) this.clearPoints();
    this.points.push(hit.point.clone());
    const normal = hit.section ? this.viewer.clipPlanes[0].normal.clone().negate() // the section face's normal
      : hit.face && hit.face.normal.clone().transformDirection(hit.object.matrixWorld);
    this.normals.push(normal || null);
    this.drawPoints();
    this.render();
  }

  distance() {
    if (this.points.length < 2) return null;
    const [a, b] = this.points.map((p) => this.toModel(p));
    const d = { dx: b.x - a.x, dy: b.y - a.y, dz: b.z - a.z };
    const [n1, n2] = this.normals;
    const angle = n1 && n2 ? THREE.MathUtils.radToDeg(n1.angleTo(n2)) : null;
    return { ...d, total: Math.hypot(d.dx, d.dy, d.dz), angle };
  }

  drawPoints() {
    this.disposeOverlay();
    const bounds = this.viewer.bounds;
    const diagonal = bounds && !bounds.isEmpty() ? bounds.getSize(new THREE.Vector3()).length() : 1;
    const sphere = new THREE.SphereGeometry(diagonal * 0.008, 12, 8);
    for (const p of this.points) {
      const marker = new THREE.Mesh(sphere, this.pointMaterial);
      marker.position.copy(p);
      marker.renderOrder = 10;
      this.group.add(marker);
    }
    if (this.points.length === 2) {
      const line = new THREE.Line(new THREE.BufferGeometry().setFromPoints(this.points), this.lineMaterial);
      line.renderOrder = 10;
      this.group.add(line);
    }
    this.viewer.container.dataset.measurePoints = String(this.points.length);
    this.viewer.requestRender();
  }

  disposeOverlay() {
    const geometries = new Set();
    this.group.traverse((o) => { if (o.geometry) geometries.add(o.geometry); });
    for (const g of geometries) g.dispose();
    this.group.clear();
  }

  clearPoints() {
    this.points = [];
    this.normals = [];
    this.drawPoints();
  }

  clear() {
    this.partInfo = null;
    this.clearPoints();
    this.render();
  }

  render() {
    const rows = [];
    // Significant digits, not fixed decimals: a part may be 0.02 mm or 2 m. The data attributes keep every digit.
    const sig = (v, reference = null) => formatSignificant(v, { reference });
    if (this.partInfo) {
      const { name, x, y, z } = this.partInfo;
      rows.push(el('div', { className: 'measure-row', dataset: { testid: 'measure-size', x: String(x), y: String(y), z: String(z) } },
        el('strong', { text: name }), ` ${sig(x)} × ${sig(y)} × ${sig(z)} mm`,
        el('span', { className: 'muted small', text: ' (X × Y × Z box)' })));
    }
    const d = this.distance();
    if (d) {
      const along = (v) => sig(v, d.total); // the components to the distance's precision
      rows.push(el('div', { className: 'measure-row', dataset: { testid: 'measure-distance', mm: String(d.total) } },
        el('strong', { text: 'Distance' }), ` ${sig(d.total)} mm`,
        el('span', { className: 'muted small', text: ` (ΔX ${along(d.dx)}, ΔY ${along(d.dy)}, ΔZ ${along(d.dz)})` })));
      if (d.angle !== null) {
        rows.push(el('div', { className: 'measure-row', dataset: { testid: 'measure-angle', deg: d.angle.toFixed(3) } },
          el('strong', { text: 'Angle between faces' }), ` ${d.angle.toFixed(1)}°`));
      }
    } else if (this.active && this.points.length === 1) {
      rows.push(el('div', { className: 'muted small', text: 'Click a second point for the distance.' }));
    }
    if (this.active && !rows.length) {
      rows.push(el('div', { className: 'muted small', text: 'Click a part for its size; two points for a distance. Esc clears.' }));
    }
    this.panel.replaceChildren(...rows);
    this.panel.hidden = !rows.length;
  }
}
