//! vpnnat-ike
