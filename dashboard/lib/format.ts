import type { Unit } from "./results";

const GROUPED = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
const FINE = new Intl.NumberFormat("en-US", { maximumFractionDigits: 3 });

/** A value as a chart label: ratios as percentages, small numbers with more digits. */
export function formatValue(value: number, unit: Unit): string {
  if (unit === "ratio") return percent(value);
  const digits = Math.abs(value) < 10 ? FINE : GROUPED;
  return `${digits.format(value)} ${unit}`;
}

export function formatNumber(value: number | null | undefined, digits = 3): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return new Intl.NumberFormat("en-US", { maximumFractionDigits: digits }).format(value);
}

/** A share (0-1) as a percentage with one decimal: 0.5 -> "50.0%". */
export function percent(share: number): string {
  return `${(share * 100).toFixed(1)}%`;
}
