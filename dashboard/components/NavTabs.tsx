"use client";

import Link from "next/link";
import { usePathname } from "next/navigation";

const TABS = [
  { href: "/benchmarks", label: "Benchmarks" },
  { href: "/docs", label: "Docs" },
  { href: "/live", label: "Live operations" },
];

export function NavTabs() {
  const pathname = usePathname();
  return (
    <nav className="tabs">
      {TABS.map((tab) => (
        <Link key={tab.href} href={tab.href}
          className={pathname.startsWith(tab.href) ? "tab active" : "tab"}>
          {tab.label}
        </Link>
      ))}
    </nav>
  );
}
