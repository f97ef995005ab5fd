# modelimage.mk: model targets for an inference repo, written by
# `modelimage render makefile`. Include it from the repo's Makefile:
#
#     MODEL ?= my-model        # a [models.NAME] entry of modelimage.toml, or a model folder
#     include modelimage.mk
#
# then `make model-build`, or `make model-push MODEL=other-model`.
#
#   model-inspect    what the model is: format, parameters, quantization, GPU memory
#   model-plan       how it splits into layers (REGISTRY=HOST: within that registry's limits)
#   model-build      build the image into $(OUT), an OCI layout (no container engine needed)
#   model-push       build and push to IMAGE (default: the model's `image` in $(CONFIG))
#   model-estimate   how long pulling the image takes (BANDWIDTH=1Gbit/s: at that speed)
#
# Every setting below can be set on the command line or before the include.

MODELIMAGE ?= modelimage
CONFIG ?= modelimage.toml
MODEL ?=
OUT ?= oci:build/$(notdir $(MODEL)):latest
IMAGE ?=
MAX_LAYER_SIZE ?=
REGISTRY ?=
BANDWIDTH ?=
# more options for every command, e.g. --insecure-registry HOST
MODELIMAGE_FLAGS ?=

_modelimage_model = $(if $(MODEL),$(MODEL),$(error set MODEL=NAME (a [models.NAME] entry of $(CONFIG)) or MODEL=PATH))
_modelimage_config = $(if $(wildcard $(CONFIG)),--config $(CONFIG))
_modelimage_size = $(if $(MAX_LAYER_SIZE),--max-layer-size $(MAX_LAYER_SIZE))

.PHONY: model-inspect model-plan model-build model-push model-estimate

model-inspect:
	$(MODELIMAGE) inspect $(_modelimage_model) $(_modelimage_config) $(MODELIMAGE_FLAGS)

model-plan:
	$(MODELIMAGE) plan $(_modelimage_model) $(_modelimage_config) $(_modelimage_size) $(if $(REGISTRY),--registry $(REGISTRY)) $(MODELIMAGE_FLAGS)

model-build:
	$(MODELIMAGE) build $(_modelimage_model) $(_modelimage_config) $(_modelimage_size) -o $(OUT) $(MODELIMAGE_FLAGS)

model-push:
	$(MODELIMAGE) build $(_modelimage_model) $(_modelimage_config) $(_modelimage_size) $(MODELIMAGE_FLAGS) --push $(IMAGE)

model-estimate:
	$(MODELIMAGE) estimate $(_modelimage_model) $(_modelimage_config) $(_modelimage_size) $(if $(BANDWIDTH),--bandwidth $(BANDWIDTH)) $(MODELIMAGE_FLAGS)
