/** @type {import('next').NextConfig} */
const nextConfig = {
  reactStrictMode: true,
  poweredByHeader: false,
  // `npm run dev` answers localhost; this lets http://127.0.0.1:3000 load its dev scripts too.
  allowedDevOrigins: ["127.0.0.1"],
  // The dashboard is its own project inside the KVGate checkout (no workspace above it).
  turbopack: { root: import.meta.dirname },
};

export default nextConfig;
