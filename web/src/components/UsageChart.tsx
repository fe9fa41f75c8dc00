import { Bar, BarChart, CartesianGrid, Legend, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { formatQuantity } from "../api/format";
import type { ChartData } from "../api/usage";

const COLORS = ["#1c7ed6", "#f08c00", "#2f9e44", "#ae3ec9", "#e03131", "#0c8599", "#5c940d", "#d6336c"];

/** Stacked bars, one stack per bucket, one colour per series (meter or domain). */
export function UsageChart({
  data,
  meter,
  granularity,
  height = 260,
  label,
}: {
  data: ChartData;
  meter: string;
  granularity: "hour" | "day";
  height?: number;
  label: string;
}) {
  const tick = (v: string) => (granularity === "day" ? v.slice(5, 10) : v.slice(11, 16));
  return (
    <figure style={{ margin: 0 }} aria-label={label} data-testid="usage-chart" data-series={data.series.join(",")}>
      <div style={{ width: "100%", height }}>
        <ResponsiveContainer width="100%" height="100%" minWidth={200}>
          <BarChart data={data.rows} margin={{ top: 8, right: 8, bottom: 0, left: 8 }}>
            <CartesianGrid strokeDasharray="3 3" vertical={false} />
            <XAxis dataKey="start" tickFormatter={tick} minTickGap={16} />
            <YAxis width={72} tickFormatter={(v: number) => formatQuantity(meter, v)} />
            <Tooltip
              labelFormatter={(v) => String(v).replace("T", " ").replace(":00.000Z", " UTC")}
              formatter={(v) => formatQuantity(meter, Number(v))}
            />
            {data.series.length > 1 && <Legend />}
            {data.series.map((s, i) => (
              <Bar key={s} dataKey={s} stackId="a" fill={COLORS[i % COLORS.length]} isAnimationActive={false} />
            ))}
          </BarChart>
        </ResponsiveContainer>
      </div>
    </figure>
  );
}
