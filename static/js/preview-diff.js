// The proposal preview's before/after figures (POST /api/preview/diff: bounding-box size and volume of the current
// design and of the previewed one, measured on the B-rep by the server), shown beside the proposals table while the
// ghost is on screen: "size 120 × 80.0 × 40.0 → 130 × 80.0 × 40.0 mm, volume 210 → 236 cm³ (+12.4 %)". Figures
// have three significant digits (viewer-units.js, vlm.units.format_significant's rules); the length unit is the
// model schema's, as the server says.
import { api, withModel } from './api.js';
import { formatSignificant } from './viewer-units.js';

// A millimetre model's volume reads in cm³ from 1000 mm³ and in m³ from 1e9 mm³ ("236 cm³", not "2.36e+05 mm³").
export function volumeScale(unit, largest) {
  if (unit === 'mm' && largest >= 1e9) return { factor: 1e-9, label: 'm³' };
  if (unit === 'mm' && largest >= 1e3) return { factor: 1e-3, label: 'cm³' };
  return { factor: 1, label: `${unit}³` };
}

function sizeText(size) {
  return size.map((v) => formatSignificant(v)).join(' × ');
}

export function diffText(diff) {
  const unit = diff.units || 'mm';
  const before = diff.before.volume;
  const after = diff.after.volume;
  const { factor, label } = volumeScale(unit, Math.max(Math.abs(before), Math.abs(after)));
  const volume = `volume ${formatSignificant(before * factor)} → ${formatSignificant(after * factor)} ${label}`;
  // a share to a tenth of a percent (the precision three digits of the volume give), +/- always written
  const share = typeof diff.volume_relative === 'number'
    ? ` (${formatSignificant(diff.volume_relative * 100, { reference: 100, digits: 4, signed: true })} %)` : '';
  return `size ${sizeText(diff.before.size)} → ${sizeText(diff.after.size)} ${unit}, ${volume}${share}`;
}

export class PreviewDiff {
  constructor(element) {
    this.element = element;
    this.token = 0;
  }

  // Ask for the figures of `values` over `model`'s current design; resolves to show(result) of it.
  request(model, values) {
    const token = ++this.token;
    return api('POST', withModel('/api/preview/diff', model), { values })
      .then((diff) => ({ diff }), (error) => ({ error }))
      .then((result) => () => this.show(result, token));
  }

  show({ diff, error }, token) {
    if (token !== this.token) return; // a newer preview or a clear came first
    const el = this.element;
    el.hidden = false;
    if (error) {
      el.textContent = `No size and volume figures: ${error.message}`;
      delete el.dataset.diff;
      return;
    }
    el.textContent = diffText(diff);
    el.dataset.diff = JSON.stringify(diff);
  }

  clear() {
    this.token += 1;
    this.element.hidden = true;
    this.element.textContent = '';
    delete this.element.dataset.diff;
  }
}
