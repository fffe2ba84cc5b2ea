// LoRA adapter picker in the model badge: lists GET /api/vlm/adapters and switches with POST /api/vlm/adapter.
// Only shown when the backend can switch adapters (the fine-tuned one); Ollama/OpenAI serve a fixed model.
import { api } from './api.js';
import { $, el, formatBytes, toast } from './dom.js';

function baseName(path) {
  if (!path) return '';
  const parts = String(path).split(/[\\/]+/).filter(Boolean);
  return parts[parts.length - 1] || String(path);
}

// The path of `path` relative to the runs folder, or null when it lies outside it. Either may be relative
// (FINETUNED_MODEL_PATH=runs/tiny/adapter against an absolute OPTIM_RUNS_DIR).
export function insideRuns(path, runsDir) {
  const parts = (p) => String(p || '').split(/[\\/]+/).filter((x) => x && x !== '.');
  const target = parts(path);
  const runs = parts(runsDir);
  if (!runs.length) return null;
  const absolute = /^([\\/]|[A-Za-z]:)/.test(String(path));
  if (absolute || target.length > runs.length) {
    if (runs.every((seg, i) => target[i] === seg) && target.length > runs.length) return target.slice(runs.length).join('/');
  }
  if (!absolute && target[0] === runs[runs.length - 1] && target.length > 1) return target.slice(1).join('/');
  return null;
}

const pct = (x) => `${(100 * x).toFixed(0)}%`;
const num = (x) => (typeof x === 'number' ? x.toFixed(4) : '-');

// What vlm.train measured on the validation split (training_summary.json), short for the picker and long for
// its tooltip: examples, steps, the loss, and the task metrics of the kept (best) checkpoint.
export function trainingText(training) {
  if (!training) return { short: '', long: 'no training summary' };
  const best = training.best || training.final_eval || {};
  const parts = [`${training.examples} examples`];
  if (typeof best.error_after === 'number') {
    parts.push(`val error ${num(best.error_before)}→${num(best.error_after)}`);
    if (typeof best.parse_rate === 'number') parts.push(`parses ${pct(best.parse_rate)}`);
  } else if (typeof best.eval_loss === 'number') {
    parts.push(`val loss ${best.eval_loss.toFixed(3)}`);
  }
  const long = [
    `trained on ${training.examples} examples (${training.val_examples ?? 0} for validation), ${training.steps} steps`,
    typeof training.final_loss === 'number' ? `final training loss ${training.final_loss.toFixed(4)}` : '',
    best.step ? `kept the checkpoint of step ${best.step}${training.selected_by ? ` (best ${training.selected_by})` : ''}` : '',
    typeof best.error_after === 'number'
      ? `validation: parameter error ${num(best.error_before)} before, ${num(best.error_after)} after; answers that parse ${pct(best.parse_rate || 0)}; precision ${best.precision == null ? '-' : pct(best.precision)}, recall ${best.recall == null ? '-' : pct(best.recall)}`
      : '',
  ];
  return { short: parts.join(', '), long: long.filter(Boolean).join('\n') };
}

export class AdapterPicker {
  constructor({ onSwitched = () => {} } = {}) {
    this.onSwitched = onSwitched; // (answer) => void: lets the status badge refresh at once
    this.listing = null;
    this.activePath = undefined;
    this.switching = false;
    $('adapter-select').addEventListener('change', (e) => this.switchTo(e.target.value));
  }

  async refresh() {
    try {
      this.show(await api('GET', '/api/vlm/adapters'));
    } catch (err) {
      // The badge keeps working without the picker; say why it is missing.
      $('adapter-area').hidden = true;
      console.warn('adapter listing unavailable:', err.message);
    }
  }

  // Called with every /api/vlm/status answer: another tab (or the CLI) may have switched the adapter.
  noticeStatus(status) {
    if (this.switching || !this.listing || !this.listing.switchable) return;
    if ((status.adapter || null) !== (this.activePath || null)) this.refresh();
  }

  show(listing) {
    this.listing = listing;
    this.activePath = listing.active_path || null;
    const area = $('adapter-area');
    area.hidden = !listing.switchable;
    if (!listing.switchable) return;
    const select = $('adapter-select');
    const adapters = listing.adapters || [];
    const options = adapters.map((a) => {
      const trained = trainingText(a.training);
      const details = [a.base_model && `base: ${baseName(a.base_model)}`, a.r && `r=${a.r}`,
        a.size_bytes && formatBytes(a.size_bytes), a.created && `created ${a.created}`, trained.long,
        a.error && `problem: ${a.error}`];
      return el('option', {
        value: a.name, text: a.error ? `${a.name} (unusable)` : `${a.name}${trained.short ? ` · ${trained.short}` : ''}`,
        disabled: Boolean(a.error), title: details.filter(Boolean).join('\n'),
      });
    });
    const active = adapters.find((a) => a.active);
    const summary = $('adapter-training');
    summary.textContent = active ? trainingText(active.training).short : '';
    summary.title = active ? trainingText(active.training).long : '';
    // The active adapter may live outside runs/ (FINETUNED_MODEL_PATH), or deeper inside it (runs/tiny/adapter):
    // show it, not selectable by name (only folders directly under runs/ are listed).
    let activeName = listing.active;
    if (!activeName && listing.active_path) {
      const inside = insideRuns(listing.active_path, listing.runs_dir);
      activeName = inside ? `${inside} (in runs/)` : `${baseName(listing.active_path)} (outside runs/)`;
      options.unshift(el('option', { value: '', text: activeName, disabled: true, title: listing.active_path }));
    }
    if (!options.length) options.push(el('option', { value: '', text: 'no adapters in runs/', disabled: true }));
    select.replaceChildren(...options);
    select.value = listing.active || '';
    select.title = `LoRA adapters in ${listing.runs_dir}`;
    area.dataset.active = activeName || '';
  }

  result(text, kind) {
    const node = $('adapter-result');
    node.textContent = text;
    node.dataset.kind = kind;
    node.title = text; // long server messages are cut short in the top bar
  }

  async switchTo(name) {
    if (!name || (this.listing && name === this.listing.active)) return;
    const select = $('adapter-select');
    select.disabled = true;
    this.switching = true;
    this.result(`switching to ${name}…`, 'pending');
    try {
      const answer = await api('POST', '/api/vlm/adapter', { name });
      const text = answer.applied === 'now'
        ? `switched in ${Number(answer.switch_s).toFixed(2)} s`
        : 'applies at next load';
      this.result(text, 'ok');
      toast(`Adapter ${answer.name}: ${text}.`);
      this.onSwitched(answer);
    } catch (err) {
      this.result(err.message, 'error');
      toast(`Adapter not switched: ${err.message}`, 'error');
    } finally {
      this.switching = false;
      select.disabled = false;
      await this.refresh(); // the select goes back to whatever is really active
    }
  }
}
