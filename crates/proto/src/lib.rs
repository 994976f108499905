//! vpnnat-proto
