// Used when the browser has no WebGL: the server's PNG render stands in for the 3D view, with the same
// interface as Viewer (load, setView, fit, toggles) so the rest of the page works unchanged.
const VIEWS = ['front', 'side', 'top', 'iso'];

export class FallbackViewer {
  constructor(container, { onStatus = () => {} } = {}) {
    this.container = container;
    this.onStatus = onStatus;
    this.loads = 0;
    this.currentView = 'iso';
    this.img = document.createElement('img');
    this.img.className = 'fallback-render';
    this.img.alt = 'rendered model';
    this.img.dataset.testid = 'viewer-fallback';
    container.prepend(this.img);
    // Controls that need the 3D scene make no sense on a still picture.
    for (const node of document.querySelectorAll('.viewer-hint, #view-fit')) node.hidden = true;
    for (const id of ['toggle-wireframe', 'toggle-grid']) document.getElementById(id).closest('label').hidden = true;
    onStatus('3D view unavailable (no WebGL): showing a server render.', true);
  }

  async load(glbUrl) {
    this.container.dataset.shownUrl = glbUrl;
    const url = new URL(glbUrl, location.href);
    this.model = url.searchParams.get('model');
    this.version = url.searchParams.get('v');
    return this.show();
  }

  show() {
    const params = new URLSearchParams({ model: this.model || '', view: this.currentView, size: '768', v: this.version || '' });
    this.container.dataset.loading = 'true';
    return new Promise((resolve) => {
      this.img.onload = () => {
        this.loads += 1;
        this.container.dataset.glbLoads = String(this.loads);
        this.container.dataset.loading = 'false';
        resolve(true);
      };
      this.img.onerror = () => {
        this.container.dataset.loading = 'false';
        this.onStatus('The model render could not be loaded.', true);
        resolve(false);
      };
      this.img.src = `/api/render.png?${params}`;
    });
  }

  setView(name) {
    if (!VIEWS.includes(name)) return;
    this.currentView = name;
    if (this.model) this.show();
  }

  fit() {}
  loadGhost() { return Promise.resolve(false); } // the server render has no target overlay
  clearGhost() {}
  showGhost() {}
  setWireframe() {}
  showGrid() {}
  partNames() { return []; }
}
