// Small helpers on the viewer's scene graph, shared by viewer.js and the viewer tools.
import * as THREE from 'three';

const HIGHLIGHT = new THREE.Color(0x3b82f6);

export function materialsOf(object) {
  if (!object.material) return [];
  return Array.isArray(object.material) ? object.material : [object.material];
}

// The part a mesh belongs to: its nearest named node (GLB nodes are named per part; a multi-primitive mesh
// loads as a named group of unnamed meshes).
export function partOf(object, root) {
  let node = object;
  while (node && node !== root) {
    if (node.name) return node;
    node = node.parent;
  }
  return object;
}

// A part's name as the model names it: three.js makes node names unique (a part named like its model becomes
// "bracket_2"); the GLB's own name is kept in userData.
export function partLabel(part) {
  return (part.userData && part.userData.name) || part.name;
}

export function shown(object) {
  for (let node = object; node; node = node.parent) if (!node.visible) return false;
  return true;
}

export function findPart(root, name) {
  let found = null;
  root.traverse((o) => { if (!found && o.name === name) found = o; });
  return found;
}

export function setHighlight(part, on) {
  part.traverse((o) => {
    if (!o.isMesh) return;
    for (const m of materialsOf(o)) {
      if (!m.emissive) continue;
      if (on) {
        m.userData.emissive = m.userData.emissive || m.emissive.clone();
        m.emissive.copy(HIGHLIGHT).multiplyScalar(0.45);
      } else if (m.userData.emissive) {
        m.emissive.copy(m.userData.emissive);
      }
    }
  });
}

export function niceStep(raw) {
  if (!(raw > 0) || !Number.isFinite(raw)) return 1;
  const exp = Math.pow(10, Math.floor(Math.log10(raw))); // any scale: a 5 um part gets a 0.5 um grid
  const f = raw / exp;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * exp;
}
