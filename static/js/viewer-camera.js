// The 3D view's camera as POST /api/vlm's `camera` (model coordinates: mm, Z up), so "include a render" shows the
// model what is on screen. The scene is glTF's (Y up, mmPerUnit mm per unit): model (x, y, z) = scene (x, -z, y).
// Null where there is no 3D view (the server-render fallback): the server then renders its iso view.
import * as THREE from 'three';

export function viewerCamera(viewer) {
  if (!viewer || !viewer.camera || !viewer.controls || !viewer.model) return null;
  const k = viewer.mmPerUnit();
  const toModel = (v, scale = k) => [v.x * scale, -v.z * scale, v.y * scale];
  const camera = viewer.camera;
  const up = new THREE.Vector3(0, 1, 0).applyQuaternion(camera.quaternion);
  const out = {
    position: toModel(camera.position), target: toModel(viewer.controls.target), up: toModel(up, 1),
    aspect: Math.min(10, Math.max(0.1, viewer.perspCamera.aspect || 1)),
  };
  if (camera.isOrthographicCamera) {
    out.projection = 'orthographic';
    out.height = ((camera.top - camera.bottom) / camera.zoom) * k;
  } else {
    out.projection = 'perspective';
    out.fov = camera.fov;
  }
  const numbers = [...out.position, ...out.target, ...out.up, out.height ?? 1, out.fov ?? 40];
  return numbers.every(Number.isFinite) ? out : null;
}
