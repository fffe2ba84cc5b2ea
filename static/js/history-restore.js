// Clicking a history row (or Enter on it) previews the state right after that entry as the ghost over the design
// (GET /api/history/{index}: its values and what restoring them would change; nothing is written). "Restore"
// makes it the design as ONE new undoable entry (POST /api/history/{index}/restore); Close, Escape, clicking the
// row again or any new design state clears it. The bar's data-state says what is on screen (browser tests).
import { api, withModel } from './api.js';
import { $, el, formatNumber } from './dom.js';

export class HistoryRestore {
  // getContext() -> {model, schema, locked}; restore(index) runs the POST through the page's edit queue.
  constructor({ list, getContext, restore, preview }) {
    this.list = list;
    this.getContext = getContext;
    this.restore = restore;
    this.preview = preview && preview.available ? preview : null;
    this.bar = $('history-restore');
    this.index = null;
    this.token = 0;
    list.addEventListener('click', (e) => this.pick(e.target.closest('[data-index]')));
    list.addEventListener('keydown', (e) => {
      const row = e.target.closest('[data-index]');
      if (row && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); this.pick(row); }
      if (e.key === 'Escape') this.clear();
    });
    $('history-restore-close').addEventListener('click', () => this.clear());
    $('history-restore-apply').addEventListener('click', () => this.apply());
  }

  async pick(row) {
    if (!row) return;
    const index = Number(row.dataset.index);
    if (index === this.index) { this.clear(); return; }
    const token = ++this.token;
    const { model, schema } = this.getContext();
    this.index = index;
    this.mark();
    this.show('loading', 'Working out that state…');
    try {
      const state = await api('GET', withModel(`/api/history/${index}`, model));
      if (token !== this.token) return;
      const names = Object.keys(state.changes);
      if (!names.length) {
        this.show('current', 'The design is in this state now.');
        return;
      }
      this.show('shown', `Restoring it would change ${describe(state.changes, schema)}.`, true);
      if (this.preview) {
        const values = Object.fromEntries(names.map((n) => [n, state.changes[n].to]));
        this.shown = JSON.stringify(values);
        await this.preview.show(model, values);
      }
    } catch (err) {
      if (token !== this.token) return;
      this.show('error', `That state cannot be shown: ${err.message}`);
    }
  }

  async apply() {
    if (this.index === null || this.getContext().locked) return;
    const index = this.index;
    this.clear();
    await this.restore(index);
  }

  // A new design state (edit, undo, another model): what was previewed may no longer be what Restore would do.
  clear() {
    this.token += 1;
    // only our own ghost: a proposal preview shown since then stays
    if (this.preview && this.shown && this.preview.viewer.container.dataset.previewValues === this.shown) this.preview.clear();
    this.shown = null;
    this.index = null;
    this.mark();
    this.bar.hidden = true;
    this.bar.dataset.state = 'none';
  }

  mark() {
    for (const row of this.list.querySelectorAll('[data-index]')) {
      const on = Number(row.dataset.index) === this.index;
      row.classList.toggle('selected', on);
      row.setAttribute('aria-pressed', String(on));
    }
  }

  show(state, text, canRestore = false) {
    this.bar.hidden = false;
    this.bar.dataset.state = state;
    $('history-restore-text').textContent = text;
    $('history-restore-apply').hidden = !canRestore;
  }
}

function describe(changes, schema = []) {
  const params = new Map(schema.map((p) => [p.name, p]));
  return Object.entries(changes).map(([name, c]) => {
    const p = params.get(name);
    const unit = p && p.unit ? ` ${p.unit}` : '';
    return `${p ? p.label || name : name} ${formatNumber(c.from, p && p.step)} → ${formatNumber(c.to, p && p.step)}${unit}`;
  }).join(', ');
}
