import type { ReactNode } from "react";

import { NavTabs } from "@/components/NavTabs";
import "./globals.css";

export const metadata = {
  title: "KVGate dashboard",
  description: "Benchmark results, docs and live operations of a KVGate gateway",
};

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body>
        <header className="topbar">
          <span className="brand">KVGate</span>
          <NavTabs />
        </header>
        <main>{children}</main>
      </body>
    </html>
  );
}
