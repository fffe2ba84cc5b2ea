// Wires the page together: one design state (GET /api/params) drives the parameter panel, the history list,
// the 3D view and the download links. Every change goes through the server and comes back as a new state.
import { api, ApiError, withModel } from './api.js';
import { $, hideBanner, isTypingTarget, showBanner, toast } from './dom.js';
import { Viewer } from './viewer.js';
import { FallbackViewer } from './viewer-fallback.js';
import { ParamsPanel, renderHistory } from './params.js';
import { StatusBadge } from './status.js';
import { AssistantPanel } from './assistant.js';
import { AdapterPicker } from './adapters.js';
import { TargetPanel } from './target.js';

const app = {
  model: new URLSearchParams(location.search).get('model') || null,
  state: null,
  history: null,
  viewer: null,
  params: null,
  busy: false,
  locked: false, // true while the optimiser runs: no other edit may slip in between
};
window.optim = app; // a handle for debugging and the browser tests

function setState(state, { force = false } = {}) {
  const versionChanged = force || !app.state || app.state.version !== state.version || app.state.model !== state.model;
  const modelChanged = app.viewedModel !== state.model;
  app.viewedModel = state.model;
  app.state = state;
  app.model = state.model;
  app.params.render(state);
  $('params-version').textContent = `version ${state.version}`;
  $('model-title').textContent = state.title || '';
  $('undo').disabled = app.locked || !state.can_undo;
  $('redo').disabled = app.locked || !state.can_redo;
  updateDownloads();
  if (versionChanged) {
    app.viewer.load(withModel('/api/model.glb', state.model, { v: String(state.version) }), { fit: modelChanged });
    refreshHistory();
  }
  if (modelChanged) {
    app.assistant.clear(); // its proposals were for the model that was on screen before
    app.target.switchModel(state.model);
  } else if (versionChanged) {
    app.target.refresh();
  }
}

// While the optimiser runs the design must not change under it: edits, history steps and model switches wait.
function setLocked(on) {
  app.locked = on;
  document.body.dataset.locked = String(on);
  app.params.setDisabled(on);
  $('model-select').disabled = on;
  $('reset').disabled = on;
  $('undo').disabled = on || !(app.state && app.state.can_undo);
  $('redo').disabled = on || !(app.state && app.state.can_redo);
}

async function refreshHistory() {
  try {
    app.history = await api('GET', withModel('/api/history', app.model));
    renderHistory($('history-list'), app.history);
  } catch (err) {
    toast(`History unavailable: ${err.message}`, 'error');
  }
}

function updateDownloads() {
  const m = app.model;
  $('download-glb').href = withModel('/api/model.glb', m, { download: '1' });
  $('download-stl').href = withModel('/api/model.stl', m, { download: '1' });
  $('download-step').href = withModel('/api/model.step', m, { download: '1' });
  $('download-png').href = withModel('/api/render.png', m, { view: app.viewer.currentView || 'iso', size: '1024', download: '1' });
}

async function reload() {
  hideBanner();
  // Refresh the view and the history even when the version is unchanged (e.g. after a conflict).
  setState(await api('GET', withModel('/api/params', app.model)), { force: true });
}

// Explain failures that concern the whole design; returns true when handled here.
function handleStateError(err) {
  if (!(err instanceof ApiError)) return false;
  if (err.code === 'version_conflict') {
    showBanner('This design was changed elsewhere (another tab or the assistant) since you loaded it, so your change '
      + 'was not applied. Reload to see the current values, then try again.', { onReload: reload });
    return true;
  }
  return false;
}

// All edits funnel through here so they are serialised: the next one carries the version the previous returned.
let queue = Promise.resolve();
function serialised(task) {
  const run = queue.then(task, task);
  queue = run.catch(() => {});
  return run;
}

async function commitValues(values) {
  return serialised(async () => {
    try {
      const state = await api('PATCH', withModel('/api/params', app.model), { version: app.state.version, values });
      setState(state);
      return state;
    } catch (err) {
      handleStateError(err);
      throw err;
    }
  });
}

async function historyStep(action) {
  if (app.locked) {
    toast('Wait for the optimiser to finish.', 'info');
    return undefined;
  }
  return serialised(async () => {
    try {
      setState(await api('POST', withModel(`/api/${action}`, app.model), { version: app.state.version }));
    } catch (err) {
      if (!handleStateError(err)) toast(err.message, err.code && err.code.startsWith('nothing_to') ? 'info' : 'error');
    }
  });
}
app.commitValues = commitValues;
app.historyStep = historyStep;

function bindToolbar() {
  for (const button of document.querySelectorAll('[data-view]')) {
    button.addEventListener('click', () => {
      app.viewer.setView(button.dataset.view);
      updateDownloads();
    });
  }
  $('view-fit').addEventListener('click', () => app.viewer.fit());
  $('toggle-wireframe').addEventListener('change', (e) => app.viewer.setWireframe(e.target.checked));
  $('toggle-grid').addEventListener('change', (e) => app.viewer.showGrid(e.target.checked));
  $('undo').addEventListener('click', () => historyStep('undo'));
  $('redo').addEventListener('click', () => historyStep('redo'));
  $('reset').addEventListener('click', () => historyStep('reset'));
  $('banner-close').addEventListener('click', hideBanner);
  document.addEventListener('keydown', (e) => {
    if (!(e.ctrlKey || e.metaKey) || e.altKey || isTypingTarget(e.target)) return;
    const key = e.key.toLowerCase();
    if (key === 'z' && !e.shiftKey) { e.preventDefault(); historyStep('undo'); }
    else if ((key === 'z' && e.shiftKey) || key === 'y') { e.preventDefault(); historyStep('redo'); }
  });
}

async function loadModels() {
  const select = $('model-select');
  try {
    const { models, default: fallback } = await api('GET', '/api/models');
    if (!app.model) app.model = fallback;
    select.replaceChildren(...models.map((m) => {
      const option = document.createElement('option');
      option.value = m.name;
      option.textContent = m.title || m.name;
      option.title = m.description || '';
      return option;
    }));
    select.value = app.model;
    select.parentElement.hidden = models.length < 2;
  } catch (err) {
    select.parentElement.hidden = true;
    if (!app.model) app.model = 'rover';
  }
  select.addEventListener('change', async () => {
    const url = new URL(location.href);
    url.searchParams.set('model', select.value);
    history.replaceState(null, '', url);
    app.model = select.value;
    try { await reload(); } catch (err) { showBanner(err.message, { kind: 'error' }); }
  });
}

async function main() {
  const body = document.body;
  const viewerOptions = {
    onPick: (name) => {
      const node = $('picked-part');
      node.textContent = name ? `Selected: ${name}` : '';
      node.hidden = !name;
      node.dataset.part = name || '';
    },
    onStatus: (text, isError) => {
      const node = $('viewer-status');
      node.textContent = text;
      node.classList.toggle('error', Boolean(isError));
    },
  };
  try {
    app.viewer = new Viewer($('viewer'), viewerOptions);
  } catch (err) {
    // No WebGL (old GPU, locked-down browser): the rest of the page still works on the server's renders.
    console.warn('3D view unavailable:', err);
    app.viewer = new FallbackViewer($('viewer'), viewerOptions);
  }
  app.params = new ParamsPanel($('params-form'), { onCommit: commitValues });
  const badge = new StatusBadge();
  app.status = badge;
  app.adapters = new AdapterPicker({ onSwitched: () => badge.poll() });
  badge.onShow = (status) => app.adapters.noticeStatus(status);
  app.target = new TargetPanel({
    maxTargetMb: Number(body.dataset.maxTargetMb) || 20,
    viewer: app.viewer,
    getContext: () => ({ model: app.model, version: app.state && app.state.version }),
    onOptimised: (state) => setState(state),
    runExclusive: serialised,
    setLocked,
    onStateError: handleStateError,
  });
  app.assistant = new AssistantPanel({
    maxUploadMb: Number(body.dataset.maxUploadMb) || 16,
    getContext: () => ({ model: app.model, ...app.state }),
    onApplied: (state) => setState(state),
    onCommitError: (err) => handleStateError(err) || app.params.showServerError(err),
    statusBadge: badge,
  });
  bindToolbar();
  badge.start();
  app.adapters.refresh();
  await loadModels();
  try {
    await reload();
  } catch (err) {
    showBanner(`The design could not be loaded: ${err.message}`, { kind: 'error', onReload: reload });
  }
  body.dataset.ready = 'true';
}

main();
