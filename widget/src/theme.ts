// The hotel's colour, made readable: text on the primary colour is white or near-black,
// whichever contrasts more (WCAG relative luminance), so any brand colour stays legible.

export type Rgb = [number, number, number];

/** `#rgb`, `#rrggbb` or `rgb(r, g, b)` (what `getComputedStyle` answers) → channels. */
export function parseColor(value: string): Rgb | null {
  const v = value.trim().toLowerCase();
  let m = v.match(/^#([0-9a-f]{3})$/);
  if (m) return [...m[1]!].map((c) => parseInt(c + c, 16)) as Rgb;
  m = v.match(/^#([0-9a-f]{6})$/);
  if (m) return [0, 2, 4].map((i) => parseInt(m![1]!.slice(i, i + 2), 16)) as Rgb;
  m = v.match(/^rgba?\(\s*(\d+)[\s,]+(\d+)[\s,]+(\d+)/);
  if (m) return [Number(m[1]), Number(m[2]), Number(m[3])];
  return null;
}

export function luminance([r, g, b]: Rgb): number {
  const channel = (c: number) => {
    const s = c / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
}

export function contrast(a: Rgb, b: Rgb): number {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x) as [number, number];
  return (hi + 0.05) / (lo + 0.05);
}

export const WHITE: Rgb = [255, 255, 255];
// Pure black: with white, one of the two always reaches 4.5:1 (WCAG AA) on any colour.
export const INK: Rgb = [0, 0, 0];

/** The text colour for a background of this colour. */
export function textOn(background: Rgb): string {
  return contrast(background, WHITE) >= contrast(background, INK) ? "#ffffff" : "#000000";
}
