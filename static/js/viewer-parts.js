// The part tree: one row per named part of the model on screen, with a show/hide checkbox, a name button that
// selects (highlights) the part, and "only" to isolate it. Hidden parts stay hidden across rebuilds of the same
// model (matched by name) and are skipped by picking and measuring; a part's B-rep edge lines are its children,
// so they hide with it (a 'visibility' event tells the edges tool to recount).
import { $, el } from './dom.js';
import { partLabel } from './viewer-scene.js';

export class PartTree {
  constructor(viewer) {
    this.viewer = viewer;
    this.panel = $('part-tree');
    this.list = $('part-list');
    this.toggle = $('toggle-parts');
    this.hidden = new Set(); // names of the parts the user hid
    this.toggle.addEventListener('click', () => this.open(this.panel.hidden));
    $('parts-show-all').addEventListener('click', () => this.showAll());
    viewer.events.addEventListener('model', () => this.rebuild());
    viewer.events.addEventListener('pick', (e) => this.markPicked(e.detail));
  }

  open(on) {
    this.panel.hidden = !on;
    this.toggle.setAttribute('aria-pressed', String(on));
  }

  parts() {
    return this.viewer.parts();
  }

  rebuild() {
    const parts = this.parts();
    const names = new Set(parts.map((p) => p.name));
    for (const name of [...this.hidden]) if (!names.has(name)) this.hidden.delete(name);
    this.list.replaceChildren(...parts.map((part) => this.row(part)));
    for (const part of parts) part.visible = !this.hidden.has(part.name);
    $('parts-count').textContent = `${parts.length}`;
    this.markPicked(this.viewer.picked);
    this.viewer.events.dispatchEvent(new Event('visibility')); // a part's edges go with it (viewer-section.js)
    this.viewer.requestRender();
  }

  row(part) {
    const name = part.name; // unique in the scene; the label is the GLB's own name
    const label = partLabel(part);
    const check = el('input', {
      type: 'checkbox', checked: !this.hidden.has(name), 'aria-label': `Show ${label}`,
      dataset: { testid: 'part-visible' },
      onchange: (e) => this.setVisible(name, e.target.checked),
    });
    const nameButton = el('button', {
      type: 'button', className: 'part-name', text: label, title: `Select ${label}`, dataset: { testid: 'part-name' },
      onclick: () => this.pick(name),
    });
    const only = el('button', {
      type: 'button', className: 'btn small ghost', text: 'only', title: `Show only ${label}`,
      'aria-label': `Show only ${label}`, dataset: { testid: 'part-only' },
      onclick: () => this.isolate(name),
    });
    return el('li', { className: 'part-row', dataset: { testid: 'part-row', part: name, visible: String(!this.hidden.has(name)) } },
      check, nameButton, only);
  }

  find(name) {
    return this.parts().find((p) => p.name === name) || null;
  }

  setVisible(name, visible) {
    if (visible) this.hidden.delete(name);
    else this.hidden.add(name);
    const part = this.find(name);
    if (part) part.visible = visible;
    const row = this.list.querySelector(`[data-part="${CSS.escape(name)}"]`);
    if (row) {
      row.dataset.visible = String(visible);
      row.querySelector('input').checked = visible;
    }
    if (!visible && this.viewer.picked && this.viewer.picked.name === name) this.viewer.select(null);
    this.viewer.events.dispatchEvent(new Event('visibility'));
    this.viewer.requestRender();
  }

  isolate(name) {
    for (const part of this.parts()) this.setVisible(part.name, part.name === name);
  }

  showAll() {
    for (const part of this.parts()) this.setVisible(part.name, true);
  }

  pick(name) {
    const part = this.find(name);
    if (!part) return;
    if (!part.visible) this.setVisible(name, true);
    const already = this.viewer.picked === part;
    this.viewer.select(already ? null : part);
  }

  markPicked(part) {
    for (const row of this.list.children) {
      const on = Boolean(part) && row.dataset.part === part.name;
      row.classList.toggle('picked', on);
      row.querySelector('.part-name').setAttribute('aria-pressed', String(on));
    }
  }
}
