include $(sort $(wildcard $(BR2_EXTERNAL_VPNNAT_PATH)/package/*/*.mk))
