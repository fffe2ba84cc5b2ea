// Parameter panel built from the schema (GET /api/params) and the history list (GET /api/history).
// An edit is committed when a control settles (slider released, number entered, checkbox toggled): one edit,
// one PATCH, one history entry. Values are range-checked here first and the server's 422 message is shown too.
// Arrow keys held (or pressed quickly) on a slider are coalesced: one PATCH when they stop, one history entry.
// A control the user is holding, or one with a change still waiting to be sent, is never moved by a server answer.
import { el, formatNumber, formatTime } from './dom.js';
import { parseValue } from './proposals.js';
import { buildRangeControl } from './ranges.js';

const KEY_COALESCE_MS = 400;
const SLIDER_KEYS = ['ArrowLeft', 'ArrowRight', 'ArrowUp', 'ArrowDown', 'PageUp', 'PageDown', 'Home', 'End'];

export class ParamsPanel {
  constructor(form, { onCommit, onRange = null, onUnreachable = () => {} }) {
    this.form = form;
    this.onCommit = onCommit; // async (values, model) => void; throws ApiError
    this.onRange = onRange; // async (parameter, {min, max} | null, model) => state; throws ApiError
    this.onUnreachable = onUnreachable; // (err) => void: the server cannot be reached
    this.model = null; // the model these rows belong to
    this.rows = new Map(); // name -> {param, inputs..., error}
    this.schemaKey = '';
  }

  render(state) {
    const key = JSON.stringify(state.schema);
    if (key !== this.schemaKey || state.model !== this.model) {
      for (const row of this.rows.values()) clearTimeout(row.timer);
      this.build(state.schema);
      this.schemaKey = key;
    }
    this.model = state.model;
    for (const [name, row] of this.rows) {
      if (this.isHeld(row, state.values[name])) continue;
      if (name in state.values) this.setRowValue(row, state.values[name]);
      if (!row.dirty) this.setError(row, '');
    }
    this.values = { ...state.values };
  }

  // The user is on this control: holding the slider, a coalesced change is waiting, or typing a new value.
  isHeld(row, value) {
    if (row.holding || row.timer) return true;
    // An answer to an older edit of this row while a newer one is still on its way: keep the newer value.
    if (row.pending > 0 && value !== undefined && value !== row.latest) return true;
    const typing = row.number && document.activeElement === row.number && row.dirty && row.inflight === undefined;
    return Boolean(typing);
  }

  build(schema) {
    this.form.replaceChildren();
    this.rows.clear();
    const groups = new Map();
    for (const p of schema) {
      const group = p.group || 'General';
      if (!groups.has(group)) groups.set(group, []);
      groups.get(group).push(p);
    }
    for (const [group, params] of groups) {
      const details = el('details', { className: 'param-group', open: true, dataset: { group } },
        el('summary', { text: group }));
      for (const p of params) details.append(this.buildRow(p));
      this.form.append(details);
    }
  }

  buildRow(p) {
    const id = `param-${p.name}`;
    const row = { param: p, dirty: false };
    const label = el('label', { className: 'param-label', for: id, text: p.label || p.name, title: p.description || '' });
    const error = el('div', { className: 'field-error', id: `${id}-error`, dataset: { testid: `${id}-error` }, hidden: true });
    row.error = error;
    let body;
    if (p.type === 'bool') {
      row.checkbox = el('input', { type: 'checkbox', id, name: p.name, dataset: { testid: id } });
      row.checkbox.addEventListener('change', () => this.commit(row, row.checkbox.checked));
      body = null; // the checkbox sits in the head row, where numeric parameters show their range
    } else {
      const step = p.step || (p.type === 'int' ? 1 : 'any');
      row.slider = el('input', {
        type: 'range', min: String(p.min), max: String(p.max), step: String(step), name: `${p.name}-slider`,
        dataset: { testid: `${id}-slider` }, 'aria-label': `${p.label || p.name} slider`,
      });
      // A text field, not type=number: "12,5" (decimal comma) must mean 12.5, and Chromium's number field drops it.
      row.number = el('input', {
        type: 'text', id, name: p.name, dataset: { testid: id, min: String(p.min), max: String(p.max) },
        inputmode: p.type === 'int' ? 'numeric' : 'decimal', 'aria-label': `${p.label || p.name}${p.unit ? ` (${p.unit})` : ''}`,
      });
      row.slider.addEventListener('input', () => {
        row.number.value = row.slider.value;
        this.markDirty(row);
      });
      row.slider.addEventListener('pointerdown', () => { row.holding = true; });
      const release = () => { row.holding = false; };
      row.slider.addEventListener('pointerup', release);
      row.slider.addEventListener('pointercancel', release);
      row.slider.addEventListener('keydown', (e) => { if (SLIDER_KEYS.includes(e.key)) row.lastKeyAt = performance.now(); });
      row.slider.addEventListener('change', () => {
        row.holding = false;
        clearTimeout(row.timer);
        row.timer = null;
        const fromKeys = row.lastKeyAt && performance.now() - row.lastKeyAt < 100;
        if (!fromKeys) { this.commitNumber(row, row.slider.value); return; }
        row.timer = setTimeout(() => { row.timer = null; this.commitNumber(row, row.slider.value); }, KEY_COALESCE_MS);
      });
      row.slider.addEventListener('blur', () => {
        if (!row.timer) return;
        clearTimeout(row.timer);
        row.timer = null;
        this.commitNumber(row, row.slider.value);
      });
      row.number.addEventListener('input', () => {
        this.markDirty(row);
        const checked = this.check(p, row.number.value);
        this.setError(row, checked.error || '');
      });
      row.number.addEventListener('change', () => this.commitNumber(row, row.number.value));
      row.number.addEventListener('keydown', (e) => {
        if (e.key === 'ArrowUp' || e.key === 'ArrowDown') { // what a number field did: step the value
          const now = this.check(p, row.number.value);
          if (now.error) return;
          e.preventDefault();
          const delta = (Number(p.step) || 1) * (e.key === 'ArrowUp' ? 1 : -1);
          const next = Math.min(p.max, Math.max(p.min, Number((now.value + delta).toPrecision(12))));
          row.number.value = String(next);
          row.slider.value = String(next);
          this.markDirty(row);
          return;
        }
        if (e.key === 'Enter') { e.preventDefault(); row.refused = undefined; this.commitNumber(row, row.number.value); }
        if (e.key === 'Escape') { this.revert(row); row.number.blur(); }
      });
      const unit = el('span', { className: 'param-unit', text: p.unit || '' });
      body = el('div', { className: 'param-controls' }, row.slider, el('div', { className: 'number-wrap' }, row.number, unit));
    }
    let tail = row.checkbox;
    let editor = null;
    if (!tail && this.onRange) { // the range is a button that opens its editor (static/js/ranges.js)
      ({ tail, editor } = buildRangeControl(p, {
        apply: (range) => this.onRange(p.name, range, this.model), onUnreachable: this.onUnreachable,
      }));
    } else if (!tail) {
      tail = el('span', { className: 'param-range muted', text: `${formatNumber(p.min)} – ${formatNumber(p.max)}${p.unit ? ` ${p.unit}` : ''}` });
    }
    const head = el('div', { className: 'param-head' }, label, tail);
    row.node = el('div', {
      className: `param-row${p.range_override ? ' range-override' : ''}`, dataset: { param: p.name, testid: `row-${p.name}` },
    }, head, body, editor, error);
    this.rows.set(p.name, row);
    return row.node;
  }

  check(p, raw) {
    if (raw === '' || raw === null || raw === undefined) return { error: 'enter a number' };
    const value = parseValue(String(raw), { type: 'float' }); // "12,5" is 12.5
    if (value === null) return { error: 'enter a number' };
    if (p.type === 'int' && !Number.isInteger(value)) return { error: 'must be a whole number' };
    const unit = p.unit ? ` ${p.unit}` : '';
    if (value < p.min || value > p.max) {
      return { error: `must be between ${formatNumber(p.min)} and ${formatNumber(p.max)}${unit}` };
    }
    return { value };
  }

  markDirty(row) {
    row.dirty = true;
    row.node.classList.add('dirty');
  }

  setRowValue(row, value) {
    row.dirty = false;
    row.refused = undefined;
    row.node.classList.remove('dirty', 'invalid');
    if (row.checkbox) row.checkbox.checked = Boolean(value);
    else {
      row.number.value = String(value);
      row.slider.value = String(value);
    }
  }

  revert(row) {
    if (this.values && row.param.name in this.values) this.setRowValue(row, this.values[row.param.name]);
    this.setError(row, '');
  }

  setError(row, message) {
    row.error.textContent = message;
    row.error.hidden = !message;
    row.node.classList.toggle('invalid', Boolean(message));
    if (row.number) row.number.setAttribute('aria-invalid', message ? 'true' : 'false');
  }

  commitNumber(row, raw) {
    const checked = this.check(row.param, raw);
    if (checked.error) {
      this.setError(row, checked.error);
      return;
    }
    // Enter and the following blur both report the same edit; a refused value is not re-sent on its own.
    if (row.inflight === checked.value || row.refused === checked.value) return;
    if (this.values && this.values[row.param.name] === checked.value) {
      this.setRowValue(row, checked.value);
      this.setError(row, '');
      return;
    }
    this.commit(row, checked.value);
  }

  async commit(row, value) {
    this.setError(row, '');
    row.node.classList.add('pending');
    row.inflight = value;
    row.latest = value;
    row.pending = (row.pending || 0) + 1;
    try {
      await this.onCommit({ [row.param.name]: value }, this.model);
    } catch (err) {
      row.refused = value;
      // Keep what the user typed, explain why it was refused; the model is unchanged.
      if (err.code === 'network_error') { this.onUnreachable(err); this.setError(row, 'not saved: the server cannot be reached'); }
      else if (err.code === 'invalid_parameter') this.showServerError(err);
      else if (err.code !== 'version_conflict') this.setError(row, err.message);
    } finally {
      row.pending -= 1;
      if (row.inflight === value) row.inflight = undefined;
      if (!row.pending) row.node.classList.remove('pending');
    }
  }

  showServerError(err) {
    const row = this.rows.get(err.body.parameter);
    if (row) {
      row.dirty = true;
      this.setError(row, err.message);
      return true;
    }
    return false;
  }

  setDisabled(disabled) {
    for (const control of this.form.querySelectorAll('input, button')) control.disabled = disabled;
  }
}

const SOURCE_LABELS = { user: 'edit', vlm: 'assistant', reset: 'reset', optimise: 'optimiser', range: 'range', restore: 'restore' };

// Rows name parameters by their label (the schema's), with units, and show the whole new value (rows wrap).
export function renderHistory(list, history, schema = []) {
  const items = [];
  const entries = history.entries || [];
  const params = new Map(schema.map((p) => [p.name, p]));
  const describe = (name, c) => {
    const p = params.get(name);
    const unit = p && p.unit ? ` ${p.unit}` : '';
    return `${p ? p.label || name : name}: ${formatNumber(c.from, p && p.step)} → ${formatNumber(c.to, p && p.step)}${unit}`;
  };
  for (let i = entries.length - 1; i >= 0; i -= 1) {
    const e = entries[i];
    const kind = (e.source && e.source.kind) || 'user';
    const state = i === history.position ? 'current' : i > history.position ? 'redoable' : 'past';
    const names = Object.keys(e.changes || {});
    // The tooltip keeps the parameters' script names (what the API and the scripts call them).
    const changes = names.map((name) => `${name}: ${formatNumber(e.changes[name].from)} → ${formatNumber(e.changes[name].to)}`).join('\n');
    const summary = kind === 'reset' || !names.length ? (e.summary || changes || '(no change)')
      : names.map((n) => describe(n, e.changes[n])).join('; ');
    items.push(el('li', {
      className: `history-entry ${state}`, title: changes, value: String(i + 1), tabIndex: 0,
      dataset: { testid: 'history-entry', index: String(i), state, source: kind },
    },
    el('span', { className: `source source-${kind}`, text: SOURCE_LABELS[kind] || kind }),
    el('span', { className: 'summary', text: summary }),
    el('time', { className: 'muted', text: formatTime(e.timestamp) })));
  }
  const initialState = history.position === -1 ? 'current' : 'past';
  items.push(el('li', {
    className: `history-entry ${initialState}`, value: '0', tabIndex: 0,
    dataset: { testid: 'history-initial', index: '-1', state: initialState },
  }, el('span', { className: 'source source-initial', text: 'start' }),
  el('span', { className: 'summary', text: 'Defaults' })));
  list.replaceChildren(...items);
}
