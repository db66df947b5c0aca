import { DocView } from "@/components/DocView";

export const dynamic = "force-dynamic";

export async function generateMetadata({ params }: { params: Promise<{ name: string }> }) {
  const { name } = await params;
  return { title: `${decodeURIComponent(name)} · KVGate docs` };
}

export default async function DocPage({ params }: { params: Promise<{ name: string }> }) {
  const { name } = await params;
  return <DocView name={decodeURIComponent(name)} />;
}
