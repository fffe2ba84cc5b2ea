// Ranges of number parameters in the parameter panel: the range shown beside each one is a button that opens a
// small inline editor (min, max; Enter applies through PUT /api/params/range, "Reset range" through DELETE).
// A range the script does not give (CQGI-style scripts) is inferred by the server and marked "inferred"; a
// range narrowed for this session is marked "narrowed". The server decides what is allowed: its 4xx message is
// shown inline and nothing changes. On success the panel is rebuilt from the new schema (the slider and the
// number field take the new bounds at once) and focus goes back to the new row's range button.
import { el, formatNumber } from './dom.js';
import { parseValue } from './proposals.js';

const span = (p, low, high) => `${formatNumber(low)} – ${formatNumber(high)}${p.unit ? ` ${p.unit}` : ''}`;

// One sentence for the tooltip, the screen reader description and (without the hint) the editor's note.
export function describeRange(p, { hint = true } = {}) {
  const here = span(p, p.min, p.max);
  if (p.range_override) {
    const script = span(p, p.script_min, p.script_max);
    return `Narrowed for this session to ${here}; the script's range is ${script}`
      + `${p.inferred ? ' (inferred from its default)' : ''}.${hint ? ' Click to change or reset it.' : ''}`;
  }
  if (p.inferred) {
    const unit = p.unit ? ` ${p.unit}` : '';
    return `Range inferred from the default ${formatNumber(p.default)}${unit}: ${here}${hint ? '; narrow it' : ''}.`;
  }
  return `Range ${here}, from the script${hint ? '; click to narrow it for this session' : ''}.`;
}

// The head-row button and the (hidden) editor of parameter `p`. `apply(range | null)` resolves with the new state
// or throws the ApiError; `onUnreachable(err)` reports a network failure.
export function buildRangeControl(p, { apply, onUnreachable = () => {} }) {
  const id = `param-${p.name}-range`;
  const label = p.label || p.name;
  const description = describeRange(p);
  const tag = p.range_override ? 'narrowed' : p.inferred ? 'inferred' : '';
  const desc = el('span', { className: 'sr-only', id: `${id}-desc`, text: description });
  const button = el('button', {
    type: 'button', className: `range-btn${tag ? ` ${tag}` : ''}`, title: description,
    'aria-expanded': 'false', 'aria-controls': `${id}-editor`, 'aria-describedby': `${id}-desc`,
    'aria-label': `Range of ${label}: ${span(p, p.min, p.max)}${tag ? `, ${tag}` : ''}. Edit`,
    dataset: { testid: `range-btn-${p.name}`, inferred: String(Boolean(p.inferred)), override: String(Boolean(p.range_override)) },
  }, el('span', { className: 'param-range', text: span(p, p.min, p.max) }),
  tag ? el('span', { className: `range-tag ${tag}`, dataset: { testid: `range-tag-${p.name}` }, text: tag, 'aria-hidden': 'true' }) : null);

  const field = (which, value) => el('input', {
    type: 'text', inputmode: p.type === 'int' ? 'numeric' : 'decimal', value: String(value), name: `${p.name}-range-${which}`,
    'aria-label': `${which === 'min' ? 'Lowest' : 'Highest'} value of ${label}${p.unit ? ` (${p.unit})` : ''}`,
    dataset: { testid: `range-${which}-${p.name}` },
  });
  const minInput = field('min', p.min);
  const maxInput = field('max', p.max);
  const error = el('div', { className: 'field-error', role: 'alert', hidden: true, dataset: { testid: `range-error-${p.name}` } });
  const applyBtn = el('button', { type: 'button', className: 'btn small primary', text: 'Apply', dataset: { testid: `range-apply-${p.name}` } });
  const resetBtn = el('button', {
    type: 'button', className: 'btn small', text: 'Reset range', hidden: !p.range_override,
    title: `Back to the script's range ${p.range_override ? span(p, p.script_min, p.script_max) : ''}`,
    dataset: { testid: `range-reset-${p.name}` },
  });
  const cancelBtn = el('button', { type: 'button', className: 'btn small ghost', text: 'Cancel', dataset: { testid: `range-cancel-${p.name}` } });
  const editor = el('div', {
    className: 'range-editor', id: `${id}-editor`, role: 'group', 'aria-label': `Range of ${label}`, hidden: true,
    dataset: { testid: `range-editor-${p.name}` },
  },
  el('div', { className: 'range-fields' },
    el('label', { className: 'small' }, 'min ', minInput),
    el('label', { className: 'small' }, 'max ', maxInput),
    el('span', { className: 'param-unit', text: p.unit || '' })),
  el('p', { className: 'muted small range-note',
    text: `${describeRange(p, { hint: false })} A narrower range applies to this session only; the script is not changed.` }),
  error,
  el('div', { className: 'btn-row' }, applyBtn, resetBtn, cancelBtn));

  const setError = (message) => {
    error.textContent = message;
    error.hidden = !message;
    for (const input of [minInput, maxInput]) input.setAttribute('aria-invalid', message ? 'true' : 'false');
  };
  const open = (on) => {
    editor.hidden = !on;
    button.setAttribute('aria-expanded', String(on));
    if (on) {
      minInput.value = String(p.min);
      maxInput.value = String(p.max);
      setError('');
      minInput.focus();
      minInput.select();
    }
  };
  const close = () => { open(false); button.focus(); };
  // After a change the panel holds a new row for this parameter: focus its button (or this one, if unchanged).
  const refocus = () => {
    if (editor.isConnected) { open(false); button.focus(); return; }
    const fresh = document.querySelector(`[data-testid="range-btn-${CSS.escape(p.name)}"]`);
    if (fresh) fresh.focus();
  };
  let busy = false;
  const send = async (range) => {
    if (busy) return;
    busy = true;
    editor.classList.add('pending');
    setError('');
    try {
      await apply(range);
      refocus();
    } catch (err) {
      if (err.code === 'network_error') { onUnreachable(err); setError('not saved: the server cannot be reached'); }
      else setError(err.message || 'the range was not changed');
    } finally {
      busy = false;
      editor.classList.remove('pending');
    }
  };
  const submit = () => {
    const low = parseValue(minInput.value, { type: 'float' }); // "12,5" is 12.5, as in the value fields
    const high = parseValue(maxInput.value, { type: 'float' });
    if (low === null || high === null) { setError('enter a number for both min and max'); return; }
    send({ min: low, max: high }); // every other check (inside the script's range, min < max, whole numbers) is the server's
  };

  button.addEventListener('click', () => open(editor.hidden));
  applyBtn.addEventListener('click', submit);
  resetBtn.addEventListener('click', () => send(null));
  cancelBtn.addEventListener('click', close);
  editor.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); close(); }
    else if (e.key === 'Enter' && e.target.tagName === 'INPUT') { e.preventDefault(); submit(); }
  });
  return { tail: el('span', { className: 'range-wrap' }, button, desc), editor };
}
