import { DocView } from "@/components/DocView";

export const dynamic = "force-dynamic";

export const metadata = { title: "Docs · KVGate" };

export default function DocsIndex() {
  return <DocView name="README.md" />;
}
