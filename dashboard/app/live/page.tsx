import { LiveView } from "@/components/LiveView";
import { loadConfig } from "@/lib/config";

export const dynamic = "force-dynamic";

export const metadata = { title: "Live operations · KVGate" };

export default function LivePage() {
  const { gatewayUrl, pollIntervalMs } = loadConfig();
  return (
    <>
      <h1>Live operations</h1>
      <p className="lead">
        Polls <code>{gatewayUrl}</code> every {pollIntervalMs / 1000} s through this server
        (<code>/api/live</code>): <code>/admin/stats</code> and <code>/metrics</code>. Rates are
        computed from successive polls.
      </p>
      <LiveView pollIntervalMs={pollIntervalMs} />
    </>
  );
}
