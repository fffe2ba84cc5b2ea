// "Preview proposal": the state the ticked proposals would make (POST /api/preview.glb: the current values with
// them over, built by the server without touching the session) drawn as a violet ghost over the current design.
// Nothing is applied: no history entry, no new version. The container's data-preview says what is on screen
// (none | loading | shown | error) and data-preview-values which values it shows (the browser tests read both).
import { makeGhost } from './viewer-ghost.js';
import { materialsOf } from './viewer-scene.js';

const PREVIEW_COLOUR = 0x8b5cf6; // violet: neither one of the model's colours nor the target's orange

export class ProposalPreview {
  constructor(viewer) {
    this.viewer = viewer;
    this.group = null;
    this.token = 0;
    this.available = Boolean(viewer.scene && viewer.loader); // the server-render fallback has no scene
    if (this.available) viewer.container.dataset.preview = 'none';
  }

  // Show `values` (parameter name: value) over the current design of `model`; resolves true once on screen,
  // false when a newer show/clear superseded it; rejects with the server's message.
  async show(model, values) {
    if (!this.available) return false;
    const token = ++this.token;
    const { container } = this.viewer;
    container.dataset.preview = 'loading';
    try {
      const response = await fetch(`/api/preview.glb?model=${encodeURIComponent(model)}`, {
        method: 'POST', cache: 'no-store', body: JSON.stringify({ values }),
        headers: { 'Content-Type': 'application/json', Accept: 'model/gltf-binary, application/json' },
      });
      if (!response.ok) {
        let message = `HTTP ${response.status}`;
        try { message = (await response.json()).message || message; } catch { /* not JSON */ }
        throw new Error(message);
      }
      const gltf = await this.viewer.loader.parseAsync(await response.arrayBuffer(), '');
      if (token !== this.token) return false;
      this.remove();
      this.group = makeGhost(gltf.scene, PREVIEW_COLOUR);
      this.group.name = 'proposal-preview';
      this.viewer.scene.add(this.group);
      container.dataset.preview = 'shown';
      container.dataset.previewValues = JSON.stringify(values);
      this.viewer.requestRender();
      return true;
    } catch (err) {
      if (token !== this.token) return false;
      this.remove();
      container.dataset.preview = 'error';
      this.viewer.requestRender();
      throw err;
    }
  }

  clear() {
    if (!this.available) return;
    this.token += 1; // a preview still loading is dropped too
    this.remove();
    this.viewer.container.dataset.preview = 'none';
    this.viewer.requestRender();
  }

  remove() {
    delete this.viewer.container.dataset.previewValues;
    if (!this.group) return;
    this.viewer.scene.remove(this.group);
    this.group.traverse((o) => {
      if (o.geometry) o.geometry.dispose();
      for (const m of materialsOf(o)) m.dispose();
    });
    this.group = null;
  }
}
