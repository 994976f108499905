################################################################################
#
# routerd
#
################################################################################

# Built from the workspace this external tree lives in (images/..).
ROUTERD_VERSION = 0.1.0
ROUTERD_SITE = $(realpath $(BR2_EXTERNAL_VPNNAT_PATH)/..)
ROUTERD_SITE_METHOD = local
ROUTERD_LICENSE = MIT or Apache-2.0
# The workspace member; cargo runs in router/ and finds the workspace
# (Cargo.lock, .cargo/config.toml) in the parent directory.
ROUTERD_SUBDIR = router

# Keep build products and images of the checkout out of the copy.
ROUTERD_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude=/target --exclude=/out --exclude=/output \
	--exclude=/images --exclude=/buildroot-overlay \
	--exclude=fuzz/target --exclude=fuzz/artifacts

# A local site has no download step, so the vendoring that
# support/download/cargo-post-process does for downloaded cargo
# packages never happens and "cargo build --offline" would fail.
# Vendor here instead: configure is the first step that runs after
# host-rustc is built. This step needs network access, like a download.
define ROUTERD_CARGO_VENDOR
	mkdir -p $(@D)/.cargo $(BR_CARGO_HOME)
	cd $(@D) && \
		$(HOST_MAKE_ENV) CARGO_HOME=$(BR_CARGO_HOME) \
		flock $(BR_CARGO_HOME)/.br-lock \
		cargo vendor --manifest-path Cargo.toml --locked VENDOR \
		> $(@D)/.cargo/config.toml
endef
ROUTERD_PRE_CONFIGURE_HOOKS += ROUTERD_CARGO_VENDOR

ifeq ($(BR2_PACKAGE_ROUTERD_AS_INIT),y)
# After every package (busybox may install its own /sbin/init link).
define ROUTERD_INSTALL_AS_INIT
	ln -sf ../usr/bin/routerd $(TARGET_DIR)/sbin/init
endef
ROUTERD_TARGET_FINALIZE_HOOKS += ROUTERD_INSTALL_AS_INIT
endif

# The workspace's firmware profile ([profile.firmware] in Cargo.toml:
# opt-level z, fat LTO, one codegen unit, panic=abort, stripped), not
# --release. The cargo infrastructure's build step hard-codes --release
# (which cargo refuses together with --profile), so the build step is
# its own, otherwise the same; cargo install takes --profile and reuses
# what the build step compiled. Buildroot's CARGO_PROFILE_RELEASE_*
# settings (opt-level, LTO, codegen units) only reach what the firmware
# profile does not set itself. BR2_ENABLE_DEBUG builds the dev profile.
ROUTERD_CARGO_PROFILE = $(if $(BR2_ENABLE_DEBUG),dev,firmware)
define ROUTERD_BUILD_CMDS
	cd $(ROUTERD_SRCDIR) && \
	$(TARGET_MAKE_ENV) \
		$(TARGET_CONFIGURE_OPTS) \
		$(PKG_CARGO_ENV) \
		$(ROUTERD_CARGO_ENV) \
		cargo build \
			--offline \
			--profile $(ROUTERD_CARGO_PROFILE) \
			--manifest-path Cargo.toml \
			--locked
endef
ROUTERD_CARGO_INSTALL_OPTS = --profile $(ROUTERD_CARGO_PROFILE)

$(eval $(cargo-package))
