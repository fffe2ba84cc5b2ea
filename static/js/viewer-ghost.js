// The target drawn as a ghost over the model (used by viewer.js); a proposal's preview too (viewer-preview.js).
import * as THREE from 'three';
import { materialsOf } from './viewer-scene.js';

const GHOST_COLOUR = 0xf97316; // the target: orange, so it never reads as one of the model's own parts

// Translucent faces plus edges: the faces show the volume, the edges keep its outline readable through the model.
// The edges are the GLB's B-rep edge lines where it has them (a proposal preview), else the mesh's crease edges
// (an uploaded target). Drawn after the opaque model (renderOrder) and never written to the depth buffer.
export function makeGhost(root, colour = GHOST_COLOUR) {
  const group = new THREE.Group();
  group.name = 'target-ghost';
  const faces = new THREE.MeshStandardMaterial({
    color: colour, transparent: true, opacity: 0.25, depthWrite: false, side: THREE.DoubleSide,
    roughness: 0.8, metalness: 0,
    // Where the target and the model share a face, pull the ghost forward so the face is tinted evenly
    // instead of flickering between the two (z-fighting).
    polygonOffset: true, polygonOffsetFactor: -1, polygonOffsetUnits: -4,
  });
  const lines = new THREE.LineBasicMaterial({ color: colour, transparent: true, opacity: 0.8 });
  root.updateMatrixWorld(true);
  let brep = false;
  root.traverse((o) => { brep = brep || (o.isLineSegments && o.userData.optim === 'brep_edges'); });
  root.traverse((o) => {
    if (!o.isMesh && !(brep && o.isLineSegments)) return;
    const geometry = o.geometry.clone().applyMatrix4(o.matrixWorld);
    if (o.isLineSegments) {
      const edges = new THREE.LineSegments(geometry, lines);
      edges.renderOrder = 3;
      group.add(edges);
      return;
    }
    const mesh = new THREE.Mesh(geometry, faces);
    mesh.renderOrder = 2;
    group.add(mesh);
    if (brep) return;
    const edges = new THREE.LineSegments(new THREE.EdgesGeometry(geometry, 30), lines);
    edges.renderOrder = 3;
    group.add(edges);
  });
  root.traverse((o) => {
    if (o.geometry) o.geometry.dispose();
    for (const m of materialsOf(o)) m.dispose();
  });
  return group;
}
