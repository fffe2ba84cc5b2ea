// The optimiser's best state so far as a ghost over the design while Optimise runs: each "best" event of the
// /api/optimise stream (at most one a second) is drawn with the proposal preview (POST /api/preview.glb). One
// preview builds at a time; a newer best waiting meanwhile replaces the older one. The container's
// data-preview-source is "optimise" while the ghost is the optimiser's (the browser tests read it).
export class BestSoFarGhost {
  constructor(preview) {
    this.preview = preview; // a ProposalPreview, shared with the assistant's proposals
    this.model = null;
    this.pending = null;
    this.busy = false;
    this.active = false;
  }

  start(model) {
    this.model = model;
    this.pending = null;
    this.active = Boolean(this.preview && this.preview.available);
  }

  show(changes) {
    if (!this.active || !changes || !Object.keys(changes).length) return;
    this.pending = changes;
    if (!this.busy) this.drain();
  }

  async drain() {
    this.busy = true;
    while (this.active && this.pending) {
      const changes = this.pending;
      this.pending = null;
      try {
        if (await this.preview.show(this.model, changes) && this.active) {
          this.preview.viewer.container.dataset.previewSource = 'optimise';
        }
      } catch (err) {
        console.warn('best-so-far ghost not shown:', err.message); // the run goes on; its answer is what counts
      }
    }
    this.busy = false;
    if (!this.active) this.preview.clear(); // the run ended while a ghost was still building
  }

  stop() {
    if (!this.active) return;
    this.active = false;
    this.pending = null;
    delete this.preview.viewer.container.dataset.previewSource;
    this.preview.clear();
  }
}
