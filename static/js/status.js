// Model status badge: polls GET /api/vlm/status (every second while the model loads or a request runs,
// every few seconds otherwise) and drives the Load / Unload buttons. Nothing here blocks the rest of the page.
import { api } from './api.js';
import { $, formatBytes, formatDuration, toast } from './dom.js';

const BACKEND_LABELS = { finetuned: 'Fine-tuned', ollama: 'Ollama', openai: 'OpenAI' };
const STATE_LABELS = { unloaded: 'not loaded', loading: 'loading', ready: 'ready', failed: 'failed' };
const FAST_MS = 1000;
const SLOW_MS = 5000;

export class StatusBadge {
  constructor() {
    this.status = null;
    this.timer = null;
    this.busy = 0; // > 0 while an assistant request runs: poll fast so loading progress shows
    this.onShow = null; // (status) => void, e.g. the adapter picker noticing a switch made elsewhere
    $('vlm-load').addEventListener('click', () => this.action('load'));
    $('vlm-unload').addEventListener('click', () => this.action('unload'));
    document.addEventListener('visibilitychange', () => { if (!document.hidden) this.poll(); });
  }

  start() {
    this.poll();
  }

  setBusy(on) {
    this.busy += on ? 1 : -1;
    if (on) this.poll();
  }

  schedule() {
    clearTimeout(this.timer);
    const loading = this.status && this.status.state === 'loading';
    let delay = loading || this.busy > 0 ? FAST_MS : SLOW_MS;
    if (document.hidden) delay = Math.max(delay, 15000);
    this.timer = setTimeout(() => this.poll(), delay);
  }

  async poll() {
    clearTimeout(this.timer);
    try {
      this.show(await api('GET', '/api/vlm/status'));
    } catch (err) {
      this.showUnreachable(err);
    }
    this.schedule();
  }

  async action(kind) {
    const button = $(kind === 'load' ? 'vlm-load' : 'vlm-unload');
    button.disabled = true;
    try {
      this.show(await api('POST', `/api/vlm/${kind}`));
      if (kind === 'unload') toast('Model unloaded; memory released.');
    } catch (err) {
      toast(err.message, 'error');
    } finally {
      this.poll();
    }
  }

  // Called with the `status` events of a streaming request, which carry the same progress fields.
  showProgress(state, progress) {
    if (!this.status) return;
    this.show({ ...this.status, state, progress });
  }

  show(status) {
    this.status = status;
    const root = $('vlm-status');
    const state = status.state || 'unknown';
    root.dataset.state = state;
    const backend = $('vlm-backend');
    backend.textContent = BACKEND_LABELS[status.backend] || status.backend || 'model';
    const details = [status.model && `model: ${status.model}`, status.adapter && `adapter: ${status.adapter}`];
    backend.title = details.filter(Boolean).join('\n');

    let stateText = STATE_LABELS[state] || state;
    if (state === 'ready' && typeof status.unload_in_s === 'number') {
      stateText += ` · unloads in ${formatDuration(status.unload_in_s)} if idle`;
    }
    const stateNode = $('vlm-state');
    stateNode.textContent = stateText;
    stateNode.dataset.state = state;
    stateNode.title = state === 'failed' && status.error ? status.error : '';

    const progress = status.progress || {};
    const bar = $('vlm-progress');
    bar.hidden = state !== 'loading';
    if (state === 'loading') {
      const fraction = Math.max(0, Math.min(1, Number(progress.fraction) || 0));
      $('vlm-progress-bar').style.width = `${(fraction * 100).toFixed(1)}%`;
      bar.setAttribute('aria-valuenow', String(Math.round(fraction * 100)));
      const eta = typeof progress.eta_s === 'number' ? ` · ~${formatDuration(progress.eta_s)} left` : '';
      $('vlm-progress-text').textContent = `${progress.phase || 'loading'} ${Math.round(fraction * 100)}%${eta}`;
    }

    const memory = status.memory || {};
    const parts = [];
    if (memory.rss_bytes) parts.push(`RAM ${formatBytes(memory.rss_bytes)}`);
    if (memory.gpu_bytes) parts.push(`GPU ${formatBytes(memory.gpu_bytes)}`);
    $('vlm-memory').textContent = parts.join(' · ');
    if (state === 'failed' && status.error) $('vlm-memory').textContent = status.error;

    $('vlm-load').disabled = state === 'loading' || state === 'ready';
    $('vlm-unload').disabled = state === 'unloaded';
    if (this.onShow) this.onShow(status);
  }

  showUnreachable(err) {
    $('vlm-status').dataset.state = 'unknown';
    $('vlm-state').textContent = 'status unavailable';
    $('vlm-state').title = err.message;
    $('vlm-progress').hidden = true;
  }
}
