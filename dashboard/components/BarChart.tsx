import type { ChartSpec } from "@/lib/results";
import { formatValue } from "@/lib/format";

// Horizontal grouped bars: category labels on the left (strategy names are long), one bar per
// series inside each category, the value printed at the bar's end. Pure SVG, rendered on the
// server, so the numbers are in the HTML and no chart library ships to the browser.
const WIDTH = 540;
const LABEL_W = 170;
const VALUE_W = 96;
const BAR_H = 14;
const BAR_GAP = 3;
const GROUP_GAP = 12;
const TOP = 8;
const PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#a855f7", "#ef4444", "#64748b", "#0ea5e9"];

export function BarChart({ spec }: { spec: ChartSpec }) {
  const values = spec.series.flatMap((s) => s.values).filter((v): v is number => v !== null);
  const max = Math.max(...values, spec.target?.value ?? 0, Number.MIN_VALUE);
  const plotW = WIDTH - LABEL_W - VALUE_W;
  const groupH = spec.series.length * (BAR_H + BAR_GAP) - BAR_GAP;
  const height = TOP + spec.categories.length * (groupH + GROUP_GAP);
  const scale = (v: number) => (Math.max(v, 0) / max) * plotW;

  return (
    <figure className="chart" data-testid="chart" data-chart={spec.id}>
      <figcaption>
        <span className="chart-title">{spec.title}</span>
        <span className="chart-better">{spec.better} is better</span>
      </figcaption>
      {spec.series.length > 1 && (
        <ul className="legend">
          {spec.series.map((s, i) => (
            <li key={s.name}>
              <span className="swatch" style={{ background: PALETTE[i % PALETTE.length] }} />
              {s.name}
            </li>
          ))}
        </ul>
      )}
      <svg
        viewBox={`0 0 ${WIDTH} ${height}`}
        width="100%"
        role="img"
        aria-label={`${spec.title} (${spec.unit})`}
      >
        {spec.categories.map((category, ci) => {
          const y0 = TOP + ci * (groupH + GROUP_GAP);
          return (
            <g key={category} data-category={category}>
              <text x={LABEL_W - 8} y={y0 + groupH / 2} className="cat-label" textAnchor="end"
                dominantBaseline="middle">
                {category}
              </text>
              {spec.series.map((series, si) => {
                const value = series.values[ci];
                const y = y0 + si * (BAR_H + BAR_GAP);
                if (value === null || value === undefined) {
                  return (
                    <text key={series.name} x={LABEL_W + 4} y={y + BAR_H / 2}
                      className="bar-missing" dominantBaseline="middle">
                      n/a
                    </text>
                  );
                }
                const w = scale(value);
                return (
                  <g key={series.name}>
                    <rect
                      x={LABEL_W} y={y} width={Math.max(w, 1)} height={BAR_H} rx={2}
                      fill={PALETTE[si % PALETTE.length]}
                      data-series={series.name} data-category={category} data-value={value}
                    >
                      <title>{`${category} · ${series.name}: ${value} ${spec.unit}`}</title>
                    </rect>
                    <text x={LABEL_W + w + 4} y={y + BAR_H / 2} className="bar-value"
                      dominantBaseline="middle" data-value={value}>
                      {formatValue(value, spec.unit)}
                    </text>
                  </g>
                );
              })}
            </g>
          );
        })}
        {spec.target && (
          <g className="target">
            <line x1={LABEL_W + scale(spec.target.value)} x2={LABEL_W + scale(spec.target.value)}
              y1={0} y2={height} strokeDasharray="4 3" />
            <title>{`${spec.target.label}: ${spec.target.value} ${spec.unit}`}</title>
          </g>
        )}
      </svg>
      {spec.note && <p className="chart-note">{spec.note}</p>}
    </figure>
  );
}
