// Wires the page together: one design state (GET /api/params) drives the parameter panel, the history list,
// the 3D view and the download links. Every change goes through the server and comes back as a new state.
import { api, ApiError, withModel } from './api.js';
import { $, hideBanner, isTypingTarget, showBanner, toast } from './dom.js';
import { Viewer } from './viewer.js';
import { FallbackViewer } from './viewer-fallback.js';
import { installViewerTools } from './viewer-tools.js';
import { ProposalPreview } from './viewer-preview.js';
import { viewerCamera } from './viewer-camera.js';
import { ParamsPanel, renderHistory } from './params.js';
import { StatusBadge } from './status.js';
import { AssistantPanel } from './assistant.js';
import { AdapterPicker } from './adapters.js';
import { TrainingPanel } from './training.js';
import { TargetPanel } from './target.js';
import { renderScriptIssues } from './scripts.js';
import { HistoryRestore } from './history-restore.js';

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
    if (app.historyRestore) app.historyRestore.clear(); // the previewed state was worked out from the old one
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
    renderHistory($('history-list'), app.history, (app.state && app.state.schema) || []);
  } catch (err) {
    toast(`History unavailable: ${err.message}`, 'error');
  }
}

function updateDownloads() {
  const m = app.model;
  $('download-glb').href = withModel('/api/model.glb', m, { download: '1' });
  $('download-stl').href = withModel('/api/model.stl', m, { download: '1' });
  $('download-step').href = withModel('/api/model.step', m, { download: '1' });
  // The server renders front, side, top and iso; the viewer's other views download as iso.
  const view = ['front', 'side', 'top', 'iso'].includes(app.viewer.currentView) ? app.viewer.currentView : 'iso';
  $('download-png').href = withModel('/api/render.png', m, { view, size: '1024', download: '1' });
}

async function reload() {
  hideBanner();
  // Refresh the view and the history even when the version is unchanged (e.g. after a conflict).
  setState(await api('GET', withModel('/api/params', app.model)), { force: true });
}

// "The server cannot be reached": the banner says so until the server answers again, then clears by itself
// (and loads the design if it never arrived). Polls /healthz once a second meanwhile.
let recoveryTimer = null;
function showUnreachable(message, { onRecovered = null } = {}) {
  showBanner(message, { kind: 'error', onReload: onRecovered });
  $('banner').dataset.network = 'true'; // cleared by any other banner, or by the server answering again
  clearInterval(recoveryTimer);
  recoveryTimer = setInterval(async () => {
    try {
      const r = await fetch('/healthz', { cache: 'no-store' });
      if (!r.ok) return;
    } catch { return; }
    clearInterval(recoveryTimer);
    recoveryTimer = null;
    if ($('banner').dataset.network === 'true') hideBanner();
    if (onRecovered) {
      try { await onRecovered(); } catch (err) { showBanner(err.message, { kind: 'error' }); }
    }
  }, 1000);
}
function isNetworkError(err) { return err instanceof ApiError && err.code === 'network_error'; }

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

// `model` is the model whose panel the edit was typed in: an edit never goes to another model, even if the page
// switched models (or tried to) while it waited in the queue.
async function commitValues(values, model = app.state && app.state.model) {
  return serialised(async () => {
    if (!app.state || app.state.model !== model) {
      throw new ApiError(409, { error: 'model_changed',
        message: `not applied: the page now shows ${app.state ? app.state.model : 'no model'}, not ${model}` });
    }
    try {
      const state = await api('PATCH', withModel('/api/params', model), { version: app.state.version, values });
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
      setState(await api('POST', withModel(`/api/${action}`, app.state.model), { version: app.state.version }));
    } catch (err) {
      if (isNetworkError(err)) showUnreachable(err.message);
      else if (!handleStateError(err)) toast(err.message, err.code && err.code.startsWith('nothing_to') ? 'info' : 'error');
    }
  });
}
// Narrow one parameter's range for this session (PUT /api/params/range), or go back to the script's (`range` null).
async function setRange(parameter, range, model = app.state && app.state.model) {
  if (app.locked) throw new ApiError(409, { error: 'locked', message: 'wait for the optimiser to finish' });
  return serialised(async () => {
    if (!app.state || app.state.model !== model) {
      throw new ApiError(409, { error: 'model_changed', message: `not applied: the page now shows ${app.state ? app.state.model : 'no model'}` });
    }
    const { version } = app.state;
    try {
      const state = range
        ? await api('PUT', withModel('/api/params/range', model), { parameter, min: range.min, max: range.max, version })
        : await api('DELETE', withModel('/api/params/range', model, { parameter }), { parameter, version });
      setState(state);
      return state;
    } catch (err) {
      handleStateError(err);
      throw err;
    }
  });
}
app.setRange = setRange;
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
    const { models, default: fallback, scripts } = await api('GET', '/api/models');
    renderScriptIssues(scripts || []);
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
  // The page's current model changes only once the new model's state has arrived; on failure the selector goes
  // back to the model still on screen, and its panel keeps editing that model.
  let switchToken = 0;
  select.addEventListener('change', async () => {
    const wanted = select.value;
    const token = ++switchToken;
    select.dataset.switching = wanted;
    try {
      const state = await serialised(() => api('GET', withModel('/api/params', wanted)));
      if (token !== switchToken) return;
      hideBanner();
      const url = new URL(location.href);
      url.searchParams.set('model', wanted);
      history.replaceState(null, '', url);
      setState(state, { force: true });
    } catch (err) {
      if (token !== switchToken) return;
      select.value = app.state ? app.state.model : app.model;
      const message = `Could not switch to ${wanted}: ${err.message} The page still shows ${select.value}.`;
      if (isNetworkError(err)) showUnreachable(message);
      else showBanner(message, { kind: 'error' });
    } finally {
      if (token === switchToken) delete select.dataset.switching;
    }
  });
}

async function main() {
  const body = document.body;
  const viewerOptions = {
    onPick: (name, label) => {
      const node = $('picked-part');
      node.textContent = name ? `Selected: ${label || name}` : '';
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
  app.tools = installViewerTools(app.viewer);
  app.params = new ParamsPanel($('params-form'), {
    onCommit: commitValues,
    onRange: setRange,
    onUnreachable: (err) => showUnreachable(err.message),
  });
  const badge = new StatusBadge();
  app.status = badge;
  app.adapters = new AdapterPicker({ onSwitched: () => badge.poll() });
  badge.onShow = (status) => app.adapters.noticeStatus(status);
  app.training = new TrainingPanel({ onFinished: () => app.adapters.refresh() });
  const preview = new ProposalPreview(app.viewer); // one ghost: the assistant's proposals, or the optimiser's best
  app.target = new TargetPanel({
    maxTargetMb: Number(body.dataset.maxTargetMb) || 20,
    viewer: app.viewer,
    getContext: () => ({ model: app.model, version: app.state && app.state.version }),
    onOptimised: (state) => setState(state),
    runExclusive: serialised,
    setLocked,
    onStateError: handleStateError,
    preview,
  });
  app.historyRestore = new HistoryRestore({
    list: $('history-list'),
    getContext: () => ({ model: app.model, schema: (app.state && app.state.schema) || [], locked: app.locked }),
    restore: (index) => historyStep(`history/${index}/restore`),
    preview,
  });
  app.assistant = new AssistantPanel({
    maxUploadMb: Number(body.dataset.maxUploadMb) || 16,
    getContext: () => ({ model: app.model, ...app.state }),
    onApplied: (state) => setState(state),
    onCommitError: (err) => handleStateError(err) || app.params.showServerError(err),
    statusBadge: badge,
    preview,
    getCamera: () => viewerCamera(app.viewer),
  });
  // The render the assistant gets is the view on screen; without a 3D view it is the server's iso view.
  $('vlm-render-view').textContent = app.viewer instanceof FallbackViewer ? 'iso view' : 'the current 3D view';
  bindToolbar();
  badge.start();
  app.adapters.refresh();
  app.training.resume();
  await loadModels();
  try {
    await reload();
  } catch (err) {
    const message = `The design could not be loaded: ${err.message}`;
    if (isNetworkError(err)) showUnreachable(message, { onRecovered: reload });
    else showBanner(message, { kind: 'error', onReload: reload });
  }
  body.dataset.ready = 'true';
}

main();
