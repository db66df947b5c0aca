/** @type {import('next').NextConfig} */
const nextConfig = {
  reactStrictMode: true,
  poweredByHeader: false,
  // The dashboard is its own project inside the KVGate checkout (no workspace above it).
  turbopack: { root: import.meta.dirname },
};

export default nextConfig;
