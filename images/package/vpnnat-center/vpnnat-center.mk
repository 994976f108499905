################################################################################
#
# vpnnat-center
#
################################################################################

# Built from the workspace this external tree lives in (images/..).
VPNNAT_CENTER_VERSION = 0.1.0
VPNNAT_CENTER_SITE = $(realpath $(BR2_EXTERNAL_VPNNAT_PATH)/..)
VPNNAT_CENTER_SITE_METHOD = local
VPNNAT_CENTER_LICENSE = MIT or Apache-2.0
# The workspace member with centerd; gatewayd is its own member
# (crates/gatewayd), built and installed alongside (see below).
VPNNAT_CENTER_SUBDIR = center

VPNNAT_CENTER_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude=/target --exclude=/out --exclude=/output \
	--exclude=/images --exclude=/buildroot-overlay \
	--exclude=fuzz/target --exclude=fuzz/artifacts

# See routerd.mk: a local site is never vendored at download time.
define VPNNAT_CENTER_CARGO_VENDOR
	mkdir -p $(@D)/.cargo $(BR_CARGO_HOME)
	cd $(@D) && \
		$(HOST_MAKE_ENV) CARGO_HOME=$(BR_CARGO_HOME) \
		flock $(BR_CARGO_HOME)/.br-lock \
		cargo vendor --manifest-path Cargo.toml --locked VENDOR \
		> $(@D)/.cargo/config.toml
endef
VPNNAT_CENTER_PRE_CONFIGURE_HOOKS += VPNNAT_CENTER_CARGO_VENDOR

define VPNNAT_CENTER_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(VPNNAT_CENTER_PKGDIR)/S05secrets \
		$(TARGET_DIR)/etc/init.d/S05secrets
	$(INSTALL) -D -m 0755 $(VPNNAT_CENTER_PKGDIR)/S60centerd \
		$(TARGET_DIR)/etc/init.d/S60centerd
	$(INSTALL) -D -m 0755 $(VPNNAT_CENTER_PKGDIR)/S61gatewayd \
		$(TARGET_DIR)/etc/init.d/S61gatewayd
endef

# The workspace's firmware profile ([profile.firmware] in Cargo.toml:
# opt-level z, fat LTO, one codegen unit, panic=abort, stripped), not
# --release. The cargo infrastructure's build step hard-codes --release
# (which cargo refuses together with --profile), so the build step is
# its own, otherwise the same; cargo install takes --profile and reuses
# what the build step compiled. Buildroot's CARGO_PROFILE_RELEASE_*
# settings (opt-level, LTO, codegen units) only reach what the firmware
# profile does not set itself. BR2_ENABLE_DEBUG builds the dev profile.
VPNNAT_CENTER_CARGO_PROFILE = $(if $(BR2_ENABLE_DEBUG),dev,firmware)
define VPNNAT_CENTER_BUILD_CMDS
	cd $(VPNNAT_CENTER_SRCDIR) && \
	$(TARGET_MAKE_ENV) \
		$(TARGET_CONFIGURE_OPTS) \
		$(PKG_CARGO_ENV) \
		$(VPNNAT_CENTER_CARGO_ENV) \
		cargo build \
			--offline \
			--profile $(VPNNAT_CENTER_CARGO_PROFILE) \
			--manifest-path Cargo.toml \
			--package vpnnat-center \
			--package vpnnat-gatewayd \
			--locked
endef
VPNNAT_CENTER_CARGO_INSTALL_OPTS = --profile $(VPNNAT_CENTER_CARGO_PROFILE)

# The cargo infrastructure installs the binaries of SUBDIR (centerd);
# gatewayd's crate gets the very same cargo install, run from its own
# directory.
define VPNNAT_CENTER_INSTALL_GATEWAYD
	$(subst cd $(VPNNAT_CENTER_SRCDIR),cd $(@D)/crates/gatewayd,$(VPNNAT_CENTER_INSTALL_TARGET_CMDS))
endef
VPNNAT_CENTER_POST_INSTALL_TARGET_HOOKS += VPNNAT_CENTER_INSTALL_GATEWAYD

$(eval $(cargo-package))
