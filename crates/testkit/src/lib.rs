//! vpnnat-testkit
