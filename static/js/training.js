// "Train…" beside the LoRA picker: POST /api/vlm/train on the examples the UI's decisions logged, follow
// GET /api/vlm/train (phase, step of total, loss, ETA), DELETE to cancel; a finished adapter joins the picker.
import { api } from './api.js';
import { $, formatDuration } from './dom.js';

const POLL_MS = 1000;

function eta(seconds) {
  const text = formatDuration(seconds); // as the Optimise panel writes its ETA
  return text ? `~${text} left` : '';
}

// One line for a job (docs/api.md, GET /api/vlm/train).
export function jobText(job) {
  if (!job) return '';
  const steps = job.total_steps ? `step ${job.step}/${job.total_steps}` : '';
  const loss = typeof job.loss === 'number' ? `loss ${job.loss.toFixed(3)}` : '';
  if (job.state === 'running') {
    const phase = job.phase === 'starting' ? 'starting (loading the model)' : job.phase;
    return [`${job.name}: ${phase}`, steps, loss, eta(job.eta_s)].filter(Boolean).join(', ');
  }
  if (job.state === 'finished') return `${job.name} trained (${job.step} steps on ${job.examples} examples): pick it in the LoRA menu`;
  if (job.state === 'cancelled') return `${job.name}: cancelled at ${steps || 'the start'}`;
  return `${job.name} failed: ${String(job.error || 'see the server log').split('\n')[0]}`;
}

export class TrainingPanel {
  constructor({ onFinished = () => {} } = {}) {
    this.onFinished = onFinished; // () => void: refresh the adapter picker
    this.timer = null;
    $('train-open').addEventListener('click', () => {
      const area = $('train-area');
      area.hidden = !area.hidden;
      if (!area.hidden) $('train-name').focus();
    });
    $('train-start').addEventListener('click', () => this.start());
    $('train-name').addEventListener('keydown', (e) => { if (e.key === 'Enter') this.start(); });
    $('train-cancel').addEventListener('click', () => this.cancel());
  }

  // At page load: a training another tab started (or this one before a reload) is shown and followed.
  async resume() {
    try {
      const { job } = await api('GET', '/api/vlm/train');
      if (job && job.state === 'running') this.follow(job);
    } catch (err) {
      console.warn('training status unavailable:', err.message);
    }
  }

  show(job, kind) {
    const node = $('train-progress');
    node.textContent = jobText(job);
    node.dataset.kind = kind || (job && job.state) || '';
    node.title = job && job.error ? job.error : node.textContent;
    $('train-cancel').hidden = !(job && job.state === 'running');
    $('train-start').disabled = Boolean(job && job.state === 'running');
    $('train-area').dataset.state = (job && job.state) || '';
  }

  async start() {
    const name = $('train-name').value.trim();
    try {
      const { job } = await api('POST', '/api/vlm/train', { name });
      this.follow(job);
    } catch (err) {
      const node = $('train-progress');
      node.textContent = err.message;
      node.dataset.kind = 'error';
    }
  }

  follow(job) {
    $('train-area').hidden = false;
    this.show(job);
    clearTimeout(this.timer);
    if (job.state !== 'running') return;
    this.timer = setTimeout(() => this.poll(), POLL_MS);
  }

  async poll() {
    try {
      const { job } = await api('GET', '/api/vlm/train');
      this.follow(job);
      if (job && job.state === 'finished') this.onFinished(job);
    } catch (err) {
      this.timer = setTimeout(() => this.poll(), 3 * POLL_MS); // the server may be restarting: keep asking
    }
  }

  async cancel() {
    try {
      const { job } = await api('DELETE', '/api/vlm/train');
      this.follow(job);
    } catch (err) {
      $('train-progress').textContent = err.message;
    }
  }
}
