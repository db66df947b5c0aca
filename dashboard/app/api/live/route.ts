import { loadConfig } from "@/lib/config";
import { fetchSnapshot } from "@/lib/gateway";

export const dynamic = "force-dynamic";

/** The live view's proxy: one snapshot of the gateway per call, never cached. */
export async function GET() {
  const snapshot = await fetchSnapshot(loadConfig());
  return Response.json(snapshot, {
    status: snapshot.ok ? 200 : 502,
    headers: { "cache-control": "no-store" },
  });
}
