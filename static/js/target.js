// Target panel: a STEP/STL target per CAD model (PUT/GET/DELETE /api/target?model=), its comparison with the
// current design (IoU, volume and bounding-box differences), a translucent ghost in the 3D view
// (GET /api/target.glb) and "Optimise" (POST /api/optimise, streamed progress; the result is one history entry).
// While it runs the Optimise button is a Cancel button (DELETE /api/optimise): the best state so far is kept.
import { api, apiUpload, ApiError, postEventStream, withModel } from './api.js';
import { $, el, formatBytes, formatDuration, toast } from './dom.js';
import { BestSoFarGhost } from './optimise-ghost.js';
import { formatSignificant } from './viewer-units.js';

const TARGET_EXTENSIONS = ['.step', '.stp', '.stl'];
const AXES = ['X', 'Y', 'Z'];

function fixed(value, digits = 1) {
  return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : '–';
}

// Sizes and volumes with significant digits (a part may be 0.02 mm or 2 m); differences to the precision of the
// target's own figure (`reference`), percentages with fixed decimals (they are scale-free).
const sig = (value) => formatSignificant(value);
const difference = (value, reference) => formatSignificant(value, { reference, signed: true });

function signed(value, digits = 1) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return '–';
  const text = value.toFixed(digits);
  return Number(text) === 0 ? text.replace('-', '') : (value > 0 ? `+${text}` : text);
}

export function formatIou(iou) {
  return typeof iou === 'number' && Number.isFinite(iou) ? iou.toFixed(3) : '–';
}

export class TargetPanel {
  constructor({ maxTargetMb, viewer, getContext, onOptimised, runExclusive, setLocked, onStateError, preview }) {
    this.maxTargetBytes = maxTargetMb * 1024 * 1024;
    this.viewer = viewer;
    this.getContext = getContext; // () => {model, version}
    this.onOptimised = onOptimised; // (state) => void
    this.runExclusive = runExclusive; // (task) => promise: runs after, and before, any other design edit
    this.setLocked = setLocked; // (bool) => void: freezes the rest of the page while the optimiser runs
    this.onStateError = onStateError; // (err) => boolean (true: handled, e.g. the version-conflict banner)
    this.bestGhost = new BestSoFarGhost(preview); // the best state so far, drawn while Optimise runs
    this.target = null;
    this.model = null;
    this.token = 0; // the newest refresh wins
    this.optimising = false;
    this.optimisingModel = null; // the model the running optimisation belongs to (cancel names it)

    $('target-limit').textContent = `STEP or STL, up to ${maxTargetMb} MB`;
    $('target-input').addEventListener('change', (e) => {
      if (e.target.files[0]) this.upload(e.target.files[0]);
      e.target.value = '';
    });
    const panel = $('target-panel');
    panel.addEventListener('dragover', (e) => { e.preventDefault(); panel.classList.add('over'); });
    panel.addEventListener('dragleave', (e) => { if (!panel.contains(e.relatedTarget)) panel.classList.remove('over'); });
    panel.addEventListener('drop', (e) => {
      e.preventDefault();
      panel.classList.remove('over');
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) this.upload(file);
    });
    $('target-remove').addEventListener('click', () => this.remove());
    $('toggle-ghost').addEventListener('change', (e) => this.viewer.showGhost(e.target.checked));
    $('optimise').addEventListener('click', () => (this.optimising ? this.cancel() : this.optimise()));
  }

  error(message) {
    const node = $('target-error');
    node.textContent = message || '';
    node.hidden = !message;
  }

  // A new model on screen: forget the old target, fetch this one's (if any) and its ghost.
  async switchModel(model) {
    this.model = model;
    this.target = null;
    this.viewer.clearGhost();
    $('optimise-result').textContent = '';
    $('target-status').textContent = '';
    this.error('');
    await this.refresh({ ghost: true });
  }

  // The design changed (edit, undo, optimise): the comparison is against the current state.
  async refresh({ ghost = false } = {}) {
    const model = this.model;
    const token = ++this.token;
    $('target-panel').dataset.loading = 'true';
    try {
      const target = await api('GET', withModel('/api/target', model));
      if (token !== this.token || model !== this.model) return;
      const isNew = !this.target || this.target.modified !== target.modified;
      this.show(target);
      if (ghost || isNew) this.viewer.loadGhost(withModel('/api/target.glb', model, { t: String(target.modified) }));
    } catch (err) {
      if (token !== this.token || model !== this.model) return;
      if (err instanceof ApiError && err.code === 'no_target') this.show(null);
      else this.error(`Target unavailable: ${err.message}`);
    } finally {
      if (token === this.token) $('target-panel').dataset.loading = 'false';
    }
  }

  show(target) {
    this.target = target;
    const panel = $('target-panel');
    panel.dataset.state = target ? 'loaded' : 'none';
    $('target-empty').hidden = Boolean(target);
    $('target-info').hidden = !target;
    if (!target) {
      $('target-file').textContent = '';
      this.viewer.clearGhost();
      return;
    }
    $('target-file').textContent = `${target.format.toUpperCase()} · ${target.kind} · ${formatBytes(target.size_bytes)}`;
    const c = target.comparison;
    const iou = $('target-iou');
    iou.textContent = c ? formatIou(c.iou) : '–';
    iou.dataset.iou = c ? String(c.iou) : '';
    panel.dataset.version = String(target.version);
    $('target-method').textContent = c
      ? (c.method === 'exact' ? 'exact (solid boolean)' : `voxels ${sig(c.voxel_mm)} mm`)
      : '';
    $('target-method').title = (c && c.fallback_reason) || '';
    if (!c) {
      $('target-compare-body').replaceChildren();
      this.error(`No comparison: ${target.comparison_error || 'the current design does not build'}`);
      return;
    }
    this.error('');
    const unit = c.units || 'mm';
    const rows = [el('tr', {},
      el('th', { text: `Volume (${unit}³)` }),
      el('td', { text: sig(c.volume.model) }),
      el('td', { text: sig(c.volume.target) }),
      el('td', {
        text: `${difference(c.volume.difference, c.volume.target)} (${signed(c.volume.relative * 100, 1)}%)`,
      }))];
    const extent = Math.max(...c.bbox.target.size.map(Math.abs)) || null; // differences to the box's precision
    AXES.forEach((axis, i) => {
      rows.push(el('tr', {},
        el('th', { text: `Size ${axis} (${unit})` }),
        el('td', { text: sig(c.bbox.model.size[i]) }),
        el('td', { text: sig(c.bbox.target.size[i]) }),
        el('td', { text: difference(c.bbox.size_difference[i], extent) })));
    });
    const centre = c.bbox.centre_difference.map((v) => difference(v, extent)).join(', ');
    rows.push(el('tr', {}, el('th', { text: `Centre offset (${unit})` }), el('td', { colspan: '3', text: centre })));
    $('target-compare-body').replaceChildren(...rows);
  }

  async upload(file) {
    this.error('');
    const name = file.name || 'target';
    if (!TARGET_EXTENSIONS.some((ext) => name.toLowerCase().endsWith(ext))) {
      this.error(`“${name}” is not a STEP (.step, .stp) or STL (.stl) file.`);
      return;
    }
    if (file.size > this.maxTargetBytes) {
      const mb = (file.size / (1024 * 1024)).toFixed(1);
      this.error(`“${name}” is ${mb} MB; the limit is ${this.maxTargetBytes / (1024 * 1024)} MB.`);
      return;
    }
    const model = this.model;
    const status = $('target-status');
    status.textContent = `Uploading ${name}…`;
    try {
      const target = await apiUpload('PUT', withModel('/api/target', model), file);
      if (model !== this.model) return;
      ++this.token; // an older refresh in flight must not overwrite this answer
      this.show(target);
      this.viewer.loadGhost(withModel('/api/target.glb', model, { t: String(target.modified) }));
      $('optimise-result').textContent = '';
      status.textContent = `${name} is the target.`;
    } catch (err) {
      status.textContent = '';
      this.error(err.message); // the previous target (if any) stays
    }
  }

  async remove() {
    const model = this.model;
    try {
      await api('DELETE', withModel('/api/target', model));
      ++this.token;
      this.show(null);
      $('optimise-result').textContent = '';
      $('target-status').textContent = 'Target removed.';
    } catch (err) {
      this.error(err.message);
    }
  }

  progress(fraction, text) {
    const node = $('optimise-progress');
    node.hidden = fraction === null;
    if (fraction === null) return;
    $('optimise-progress-bar').style.width = `${(Math.max(0, Math.min(1, fraction)) * 100).toFixed(1)}%`;
    $('optimise-progress-text').textContent = text;
    node.setAttribute('aria-valuenow', String(Math.round(fraction * 100)));
  }

  maxSteps() {
    const steps = Number($('optimise-steps').value);
    return Number.isInteger(steps) && steps >= 1 && steps <= 2000 ? steps : null;
  }

  async optimise() {
    if (this.optimising || !this.target) return;
    const maxSteps = this.maxSteps();
    if (maxSteps === null) {
      this.error('Steps must be a whole number from 1 to 2000.');
      return;
    }
    this.error('');
    this.optimising = true;
    this.optimisingModel = this.model;
    const button = $('optimise');
    const idle = { text: button.textContent, title: button.title };
    button.textContent = 'Cancel';
    button.title = 'Stop the optimiser; the best shape found so far is kept (one undoable step)';
    button.dataset.mode = 'cancel';
    $('optimise-result').textContent = '';
    $('target-panel').dataset.optimising = 'true';
    this.setLocked(true);
    this.progress(0, 'starting…');
    this.bestGhost.start(this.model);
    try {
      await this.runExclusive(() => this.runOptimise(maxSteps));
    } finally {
      this.bestGhost.stop();
      this.optimising = false;
      this.optimisingModel = null;
      button.textContent = idle.text;
      button.title = idle.title;
      button.dataset.mode = 'optimise';
      button.disabled = false;
      $('target-panel').dataset.optimising = 'false';
      this.setLocked(false);
      this.progress(null);
    }
  }

  async cancel() {
    const button = $('optimise');
    if (!this.optimising || button.disabled) return;
    button.disabled = true; // until the run ends: one cancel is enough
    $('optimise-progress-text').textContent = 'cancelling…';
    try {
      await api('DELETE', withModel('/api/optimise', this.optimisingModel));
    } catch (err) {
      // not_running: it finished meanwhile; its answer arrives on the stream as usual.
      if (!(err instanceof ApiError && err.code === 'not_running')) this.error(`Cancel failed: ${err.message}`);
      if (this.optimising) button.disabled = false;
    }
  }

  async runOptimise(maxSteps) {
    const ctx = this.getContext();
    const body = { version: ctx.version, max_steps: maxSteps, stream: true, use_vlm: $('optimise-use-vlm').checked };
    let answer = null;
    const started = performance.now();
    const startIou = this.target && this.target.comparison ? this.target.comparison.iou : null;
    try {
      for await (const { event, data } of postEventStream(withModel('/api/optimise', ctx.model), body)) {
        if (event === 'vlm') {
          const vlm = data.accepted ? `VLM proposal kept (IoU ${formatIou(data.iou)})` : `VLM: ${data.note || 'proposal not kept'}`;
          this.progress(0, vlm);
        } else if (event === 'progress') {
          // The events carry each stage's own score (not an IoU): show the steps, the stage and an ETA instead,
          // next to the IoU the search started from; the final IoU comes with the answer.
          const stage = `stage ${data.stage + 1}/${data.stages}`;
          const elapsed = (performance.now() - started) / 1000;
          // the server's ETA (its measured time per evaluation, both build workers counted) where it sends one
          const left = typeof data.eta_s === 'number' ? data.eta_s
            : (data.step > 0 ? (elapsed / data.step) * (data.max_steps - data.step) : null);
          const eta = left === null ? '' : ` · ~${formatDuration(left)} left`;
          const from = startIou === null ? '' : ` · IoU at start ${formatIou(startIou)}`;
          this.progress(data.step / data.max_steps, `step ${data.step}/${data.max_steps} · ${stage}${eta}${from}`);
          $('optimise-progress').dataset.etaS = left === null ? '' : String(left);
        } else if (event === 'best') {
          this.bestGhost.show(data.changes);
        } else if (event === 'done') {
          answer = data;
        } else if (event === 'error') {
          throw new ApiError(422, data);
        }
      }
      if (!answer) throw new ApiError(0, { error: 'stream_ended', message: 'the optimiser stopped before it finished; try again' });
    } catch (err) {
      if (!(err instanceof ApiError && this.onStateError(err))) this.error(`Optimise failed: ${err.message}`);
      toast(`Optimise failed: ${err.message}`, 'error');
      return;
    }
    const report = answer.optimise;
    const result = $('optimise-result');
    result.dataset.applied = String(report.applied);
    result.dataset.iouBefore = String(report.iou_before);
    result.dataset.iouAfter = String(report.iou_after);
    const vlm = report.vlm_accepted ? ', VLM proposal kept' : (body.use_vlm && report.vlm_note ? `, VLM not used: ${report.vlm_note}` : '');
    const seconds = `${report.steps} steps, ${fixed(report.elapsed_s, 1)} s, ${report.stopped.replace('_', ' ')}${vlm}`;
    result.replaceChildren(
      el('span', { text: 'IoU ' }),
      el('strong', { text: `${formatIou(report.iou_before)} → ${formatIou(report.iou_after)}` }),
      el('span', { className: 'muted', text: report.applied ? ` (${seconds}; undo reverts it)` : ` (${seconds}; no better shape found, nothing changed)` }),
    );
    this.onOptimised(answer); // state + entry: one history entry when applied
  }
}
