// Measured figures for people at any scale (the same rules as vlm.units.format_significant): three significant
// digits, so a 0.0156 mm plate reads "0.0156" and not "0.0", its volume "0.0585" and not "0", and the same part
// at x0.01, x1 and x100 reads the same digits (0.257, 25.7, 2570). Trailing zeros are kept (12 is "12.0").
// `reference` sets the precision instead of the value: a difference is written to the precision of the figures
// it compares (-2.1 beside 25.7), so float noise reads 0. `signed` puts a + before positive values. From 1e6 up
// and below 1e-6 with an exponent. Not a number: an en dash.
export const SIGNIFICANT_DIGITS = 3;
const PLAIN = [-6, 6]; // decimal exponents written without an exponent

export function formatSignificant(value, { digits = SIGNIFICANT_DIGITS, reference = null, signed = false } = {}) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return '–';
  const given = typeof reference === 'number' && Number.isFinite(reference) && reference !== 0;
  const scale = given ? Math.abs(reference) : Math.abs(value);
  if (scale === 0) return '0';
  const exponent = Math.floor(Math.log10(scale));
  const place = exponent - digits + 1; // the decimal place of the last significant digit
  let text;
  if (exponent >= PLAIN[0] && exponent < PLAIN[1]) {
    const whole = Math.sign(value) * Math.floor(Math.abs(value) / 10 ** place + 0.5) * 10 ** place; // half away from 0
    text = place < 0 ? value.toFixed(-place) : whole.toFixed(0);
  } else {
    const own = value ? Math.floor(Math.log10(Math.abs(value))) : place - 1;
    const kept = own - place + 1; // significant digits of the value at the reference's precision
    text = kept >= 1 ? value.toExponential(kept - 1).replace(/e([+-])(\d)$/, 'e$10$2') : '0'; // e-9 -> e-09
  }
  if (Number(text) === 0) return text.replace(/^-/, ''); // -0.0 is 0.0
  return signed && value > 0 ? `+${text}` : text;
}

// A length with its unit: "0.0156 mm".
export function formatLength(value, unit = 'mm', options = {}) {
  return `${formatSignificant(value, options)} ${unit}`;
}
