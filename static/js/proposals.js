// The proposal review table: the designer ticks, corrects or adds values before applying them, or rejects the
// answer (optionally saying that nothing should change). What is applied is what the server logs as the example's
// target, so even a wrong answer from an untrained model becomes a right training example.
// Apply: POST /api/proposals/<id>/apply {version, parameters: [taken as proposed], values: {corrected or added}}.
import { api } from './api.js';
import { $, el, formatNumber, toast } from './dom.js';
import { PreviewDiff } from './preview-diff.js';

// "12,5" is 12.5 (a decimal comma), never 125.
export function parseValue(text, param) {
  if (param.type === 'bool') return text === 'true';
  const cleaned = String(text).trim().replace(/\s+/g, '').replace(/^(-?\d+),(\d+)$/, '$1.$2');
  if (!/^-?(\d+\.?\d*|\.\d+)(e-?\d+)?$/i.test(cleaned)) return null;
  const value = Number(cleaned);
  if (!Number.isFinite(value)) return null;
  if (param.type === 'int' && !Number.isInteger(value)) return null;
  return value;
}

function rangeProblem(value, param) {
  if (value === null) return param.type === 'int' ? 'a whole number' : 'a number';
  if (param.type === 'bool') return '';
  if (param.min !== null && param.min !== undefined && value < param.min) return `at least ${param.min}`;
  if (param.max !== null && param.max !== undefined && value > param.max) return `at most ${param.max}`;
  return '';
}

function valueInput(param, value) {
  if (param.type === 'bool') {
    return el('select', { dataset: { testid: 'proposal-value' }, 'aria-label': `value for ${param.label}` },
      el('option', { value: 'true', text: 'on', selected: value === true }),
      el('option', { value: 'false', text: 'off', selected: value !== true }));
  }
  return el('input', {
    type: 'text', inputMode: 'decimal', size: 7, value: typeof value === 'number' ? formatNumber(value, param.step) : '',
    dataset: { testid: 'proposal-value' }, 'aria-label': `value for ${param.label}`,
  });
}

export class ProposalTable {
  constructor({ getContext, onApplied, onCommitError, preview = null }) {
    this.getContext = getContext;
    this.preview = preview && preview.available ? preview : null; // the ticked rows as a ghost (viewer-preview.js)
    this.previewTimer = null;
    this.diff = new PreviewDiff($('preview-diff')); // before/after size and volume while the ghost is shown
    this.onApplied = onApplied;
    this.onCommitError = onCommitError;
    this.response = null;
    this.rows = []; // {param, proposal|null, box, input, row, verdict}
    $('apply-selected').addEventListener('click', () => this.apply(false));
    $('apply-all').addEventListener('click', () => this.apply(true));
    $('reject-proposals').addEventListener('click', () => this.reject());
    $('add-proposal').addEventListener('click', () => this.addRow());
    $('preview-proposal').closest('label').hidden = !this.preview;
    $('preview-proposal').addEventListener('change', () => this.updatePreview(0));
  }

  // The values the ticked rows would apply (corrected ones as corrected), for the preview.
  tickedValues() {
    const values = {};
    for (const entry of this.rows) {
      if (!entry.param || entry.box.disabled || !entry.box.checked) continue;
      const value = this.check(entry);
      if (value !== null) values[entry.param.name] = value;
    }
    return values;
  }

  // Show (or refresh, after `delay` ms so typing makes one build) or clear the preview as the toggle says.
  updatePreview(delay = 300) {
    if (!this.preview) return;
    clearTimeout(this.previewTimer);
    const on = $('preview-proposal').checked && this.response && !this.response.rejected;
    if (!on) {
      this.clearPreview(false);
      return;
    }
    this.previewTimer = setTimeout(async () => {
      const values = this.tickedValues();
      const status = $('preview-status');
      if (!Object.keys(values).length) {
        this.preview.clear();
        this.diff.clear();
        status.textContent = 'Tick a change with a valid value to preview it.';
        return;
      }
      status.textContent = 'Building the preview…';
      const { model } = this.getContext();
      const figures = this.diff.request(model, values); // measured while the GLB builds
      try {
        if (await this.preview.show(model, values)) {
          const n = Object.keys(values).length;
          status.textContent = `Violet: the design with the ${n} ticked change${n === 1 ? '' : 's'} (not applied).`;
          (await figures)();
        }
      } catch (err) {
        this.diff.clear();
        status.textContent = `No preview: ${err.message}`;
      }
    }, delay);
  }

  clearPreview(untick = true) {
    clearTimeout(this.previewTimer);
    if (untick) $('preview-proposal').checked = false;
    $('preview-status').textContent = '';
    this.diff.clear();
    if (this.preview) this.preview.clear();
  }

  schema() {
    return new Map((this.getContext().schema || []).map((p) => [p.name, p]));
  }

  show(response) {
    this.response = response;
    this.overwrite = false; // set after a 409 stale_proposal: the next Apply replaces the newer edits
    this.rows = [];
    const schema = this.schema();
    const values = this.getContext().values || {};
    const tbody = $('proposals-table').querySelector('tbody');
    tbody.replaceChildren();
    for (const proposal of response.proposals || []) this.appendRow(schema.get(proposal.parameter), proposal, values);
    const picker = $('add-proposal-parameter');
    picker.replaceChildren(...[...schema.values()].map((p) => el('option', { value: p.name, text: p.label })));
    const explain = response.parse_error || (response.warnings || []).join(' ');
    $('proposals-note').textContent = explain
      ? `${response.parse_error ? 'No usable proposal: ' : ''}${explain}` : '';
    $('proposals-status').textContent = '';
    $('reject-no-change').checked = false;
    $('reject-proposals').disabled = false;
    $('reject-proposals').textContent = 'Reject';
    $('proposals').dataset.decision = '';
    $('proposals').hidden = false;
    this.clearPreview();
    this.updateButtons();
  }

  appendRow(param, proposal, values) {
    const current = param ? values[param.name] : undefined;
    const same = proposal && proposal.valid && param && proposal.value === current;
    const usable = Boolean(param);
    const box = el('input', { type: 'checkbox', checked: Boolean(proposal && proposal.valid && !same) || !proposal,
      disabled: !usable, dataset: { testid: 'proposal-check', parameter: param ? param.name : String(proposal.parameter) },
      'aria-label': `apply ${param ? param.label : proposal.parameter}` });
    const input = usable ? valueInput(param, proposal ? proposal.value : current) : null;
    const verdict = el('td', { dataset: { testid: 'proposal-verdict' } });
    const unit = param && param.unit ? ` ${param.unit}` : '';
    const row = el('tr', { dataset: { testid: 'proposal-row', index: String(this.rows.length),
      valid: String(Boolean(proposal && proposal.valid)), added: String(!proposal) } },
      el('td', {}, box),
      el('td', { title: param ? param.name : String(proposal.parameter) },
        el('div', { className: 'param-name', text: param ? param.label : String(proposal.parameter) }),
        el('div', { className: 'nowrap' },
          el('span', { className: 'muted', text: formatNumber(current, param && param.step) }), ' → ',
          input || el('strong', { text: formatNumber(proposal.value) }), unit)),
      el('td', { className: 'reason', text: proposal ? proposal.reason || '' : 'added by you' }),
      verdict);
    const entry = { param, proposal, box, input, row, verdict };
    if (input) {
      input.addEventListener('input', () => { box.checked = true; this.check(entry); this.updateButtons(); this.updatePreview(); });
      input.addEventListener('change', () => { box.checked = true; this.check(entry); this.updateButtons(); this.updatePreview(); });
    }
    box.addEventListener('change', () => { this.updateButtons(); this.updatePreview(); });
    this.rows.push(entry);
    $('proposals-table').querySelector('tbody').append(row);
    this.check(entry);
  }

  addRow() {
    const param = this.schema().get($('add-proposal-parameter').value);
    if (!param || !this.response || this.response.rejected) return;
    const existing = this.rows.find((r) => r.param && r.param.name === param.name);
    if (existing) { existing.input.focus(); return; }
    this.appendRow(param, null, this.getContext().values || {});
    this.rows[this.rows.length - 1].input.focus();
    this.updateButtons();
  }

  // The value the row would apply, or null with the reason shown in its verdict cell.
  check(entry) {
    const { param, proposal, input, row, verdict } = entry;
    if (!param) {
      row.className = 'rejected';
      verdict.className = 'bad';
      verdict.textContent = `✗ ${proposal.error || 'not a parameter of this model'}`;
      return null;
    }
    const value = parseValue(input.value, param);
    const problem = rangeProblem(value, param);
    const current = (this.getContext().values || {})[param.name];
    const edited = !proposal || value !== proposal.value;
    row.className = row.className.includes('applied') ? 'applied' : (problem ? 'rejected' : 'valid');
    if (proposal && !proposal.valid && !edited) { // the server's reason stands until the designer changes the value
      row.className = 'rejected';
      verdict.className = 'bad';
      verdict.textContent = `✗ rejected: ${proposal.error || 'invalid'}`;
      return null;
    }
    if (problem) {
      verdict.className = 'bad';
      verdict.textContent = `✗ needs ${problem}`;
      return null;
    }
    verdict.className = value === current ? 'muted' : 'ok';
    verdict.textContent = value === current ? '= current value' : (edited ? '✎ your value' : '✓ valid');
    return value;
  }

  chosen(all) {
    const parameters = [];
    const values = {};
    for (const entry of this.rows) {
      if (!entry.param || entry.box.disabled || (!all && !entry.box.checked)) continue;
      const value = this.check(entry);
      if (value === null) continue;
      if (entry.proposal && entry.proposal.valid && value === entry.proposal.value) parameters.push(entry.param.name);
      else values[entry.param.name] = value;
    }
    return { parameters, values };
  }

  updateButtons() {
    const open = this.response && !this.response.rejected;
    const live = this.rows.filter((r) => r.param && !r.box.disabled);
    $('apply-selected').disabled = !open || !live.some((r) => r.box.checked);
    $('apply-all').disabled = !open || !live.length;
    $('add-proposal').disabled = !open;
    $('preview-proposal').disabled = !open;
  }

  async apply(all) {
    if (!this.response || this.response.rejected) return;
    const { parameters, values } = this.chosen(all);
    if (!parameters.length && !Object.keys(values).length) {
      $('proposals-status').textContent = 'Select at least one change with a valid value.';
      return;
    }
    const ctx = this.getContext();
    $('apply-selected').disabled = true;
    $('apply-all').disabled = true;
    try {
      const state = await api('POST', `/api/proposals/${encodeURIComponent(this.response.id)}/apply?model=${encodeURIComponent(ctx.model)}`,
        { version: ctx.version, parameters, values, ...(this.overwrite ? { overwrite: true } : {}) });
      const names = [...parameters, ...Object.keys(values)];
      for (const entry of this.rows) {
        if (entry.param && names.includes(entry.param.name)) {
          entry.row.classList.add('applied');
          entry.box.checked = false;
          entry.box.disabled = true;
          if (entry.input) entry.input.disabled = true;
        }
      }
      const changed = Object.keys(state.applied || {}).length;
      $('proposals-status').textContent = state.entry
        ? `Applied ${changed} change${changed === 1 ? '' : 's'}; undo reverts them.`
        : 'Nothing changed: those values are already in place.';
      this.clearPreview(); // the design on screen is the applied state now
      this.onApplied(state);
    } catch (err) {
      if (err.status === 409 && err.body && err.body.error === 'stale_proposal') {
        for (const entry of this.rows) {
          if (entry.param && (err.body.parameters || []).includes(entry.param.name)) {
            entry.row.classList.add('stale');
            entry.row.dataset.stale = 'true';
            entry.verdict.className = 'bad';
            entry.verdict.textContent = '⚠ edited since the answer';
          }
        }
        const names = (err.body.parameters || []).join(', ');
        $('proposals-status').textContent = `Not applied: ${names} changed after the model answered. `
          + 'Untick those rows, or press Apply again to replace your newer edit.';
        this.overwrite = true;
      } else if (!this.onCommitError(err)) {
        $('proposals-status').textContent = err.message;
      }
      toast(err.message, 'error');
    } finally {
      this.updateButtons();
    }
  }

  // Turn the answer down: kept as a rejected answer; a "no change" example only when the designer says so.
  async reject() {
    if (!this.response || this.response.rejected) return;
    const button = $('reject-proposals');
    const noChange = $('reject-no-change').checked;
    button.disabled = true;
    try {
      await api('POST', `/api/proposals/${encodeURIComponent(this.response.id)}/reject`, { nothing_should_change: noChange });
      this.response.rejected = true;
      for (const entry of this.rows) {
        entry.box.checked = false;
        entry.box.disabled = true;
        if (entry.input) entry.input.disabled = true;
      }
      button.textContent = 'Rejected';
      this.clearPreview();
      $('proposals').dataset.decision = 'rejected';
      $('proposals-status').textContent = noChange
        ? 'Recorded: nothing should change for this request (kept as a training example).'
        : 'Rejection recorded (kept as a rejected answer, not as "no change"); nothing was changed.';
      $('proposals-status').scrollIntoView({ block: 'nearest' });
    } catch (err) {
      button.disabled = false;
      $('proposals-status').textContent = err.message;
      toast(err.message, 'error');
    } finally {
      this.updateButtons();
    }
  }

  hide() {
    this.clearPreview();
    this.response = null;
    this.rows = [];
    $('proposals').hidden = true;
  }
}
