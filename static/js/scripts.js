// Model scripts that were found but not loaded (GET /api/models' `scripts` with status error, invalid_name or
// shadowed), shown beside the model picker as a "n scripts not loaded" disclosure, so a user whose script is
// broken, badly named or hidden by a shipped model learns why it is not in the picker.
import { $, el } from './dom.js';

const STATUS_LABELS = {
  error: 'does not load',
  invalid_name: 'file name not usable',
  shadowed: 'hidden by another script',
};

function scriptItem(s) {
  const where = [s.origin === 'shipped' ? 'shipped' : 'your folder', s.line ? `line ${s.line}` : null].filter(Boolean).join(', ');
  return el('li', { className: 'script-issue', dataset: { testid: 'script-issue', status: s.status, file: s.file || '' } },
    el('div', { className: 'script-issue-head' },
      el('code', { className: 'script-file', text: s.file || s.name || '?' }),
      el('span', { className: `script-status status-${s.status}`, text: STATUS_LABELS[s.status] || s.status }),
      where ? el('span', { className: 'muted small', text: where }) : null),
    el('div', { className: 'script-message', dataset: { testid: 'script-message' }, text: s.error || '(no message)' }));
}

export function renderScriptIssues(scripts) {
  const box = $('script-issues');
  if (!box) return;
  const failed = (scripts || []).filter((s) => s && s.status && s.status !== 'ok');
  box.hidden = failed.length === 0;
  $('script-issues-count').textContent = `${failed.length} script${failed.length === 1 ? '' : 's'} not loaded`;
  $('script-issues-list').replaceChildren(...failed.map(scriptItem));
  if (!box.dataset.bound) {
    box.dataset.bound = 'true';
    box.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && box.open) {
        box.open = false;
        box.querySelector('summary').focus();
      }
    });
    document.addEventListener('click', (e) => { if (box.open && !box.contains(e.target)) box.open = false; });
  }
}
