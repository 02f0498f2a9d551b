# tpla: `make` builds ./run, ./convert and ./test; `make run` runs the default model; `make test` tests;
# `make asan` runs the tests on a sanitizer build (below).
CC = gcc
CFLAGS = -O3 -Wall -Wextra -std=gnu11
OMP = -fopenmp
NVCC = nvcc
# (-lineinfo: source lines in Nsight Compute's and compute-sanitizer's reports; no cost in speed)
NVCCFLAGS = -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo
MODEL = models/tiny.bin

# The GPU engine is built when nvcc is found, and says so; without it (or with `make NVCC=none`) the build
# is CPU only, and says so.
NVCC_PATH := $(shell command -v $(NVCC) 2>/dev/null)
ifneq ($(NVCC_PATH),)
$(info nvcc found ($(NVCC_PATH)): building the GPU engine too; `make NVCC=none` builds the CPU engine alone)
CUDA_HOME ?= $(abspath $(dir $(NVCC_PATH))/..)
GPU_OBJ = tpla.o
ENGINE = -DTPLA_CUDA
LDLIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ -lpthread
# NCCL (the collectives between GPUs) is not part of the CUDA Toolkit. NCCL_HOME is the folder with its
# include/nccl.h and lib/libnccl.so (or lib64/, lib/<arch>/); unset, it is the first of CUDA_HOME, /usr
# and /usr/local that holds both. Without NCCL (none found, or NCCL_HOME= empty) the GPU engine is built
# for one GPU, against the stand-in header nonccl/nccl.h, and says so.
nccl_lib = $(firstword $(wildcard $(1)/lib/libnccl.so $(1)/lib64/libnccl.so $(1)/lib/*/libnccl.so))
NCCL_HOME ?= $(firstword $(foreach d,$(CUDA_HOME) /usr /usr/local,$(if $(wildcard $(d)/include/nccl.h),$(if $(call nccl_lib,$(d)),$(d)))))
ifneq ($(NCCL_HOME),)
NCCL_LIB := $(call nccl_lib,$(NCCL_HOME))
ifeq ($(and $(wildcard $(NCCL_HOME)/include/nccl.h),$(NCCL_LIB)),)
$(error NCCL_HOME=$(NCCL_HOME) has no include/nccl.h with lib/libnccl.so (or lib64/, lib/<arch>/); give the folder NCCL is in, or NCCL_HOME= to build for one GPU)
endif
NVCCFLAGS += $(if $(filter /usr,$(NCCL_HOME)),,-I$(NCCL_HOME)/include)
NCCL_LIBDIR := $(patsubst %/,%,$(dir $(NCCL_LIB)))
LDLIBS += -L$(NCCL_LIBDIR) -Wl,-rpath,$(NCCL_LIBDIR) -lnccl
else
$(info nvcc found but no NCCL (it is not part of the CUDA Toolkit): building the GPU engine for one GPU; for -K 2 and up install NCCL or set NCCL_HOME)
NVCCFLAGS += -Inonccl
ENGINE += -DTPLA_NO_NCCL
endif
else
$(info $(if $(filter none,$(NVCC)),NVCC=none,nvcc not found): building the CPU-only engine; -d gpu and -m bench are unavailable)
endif
LDLIBS += -lm

.PHONY: all bin test run asan clean FORCE
all: bin convert test-bin

# ./run and ./test are relinked by `make` (cheap); the phony targets run and test then execute them.
bin: run.o $(GPU_OBJ)
	$(CC) $(CFLAGS) $(OMP) run.o $(GPU_OBJ) -o run $(LDLIBS)
test-bin: test.o $(GPU_OBJ)
	$(CC) $(CFLAGS) $(OMP) test.o $(GPU_OBJ) -o test $(LDLIBS)
# .engine and .nvccflags hold the flags the objects were built with; each is rewritten (and what depends
# on it rebuilt) only when they change, so switching builds (make NVCC=none, NCCL_HOME=) needs no make clean.
.engine: FORCE
	@echo '$(ENGINE)' | cmp -s - $@ || echo '$(ENGINE)' > $@
.nvccflags: FORCE
	@echo '$(NVCCFLAGS)' | cmp -s - $@ || echo '$(NVCCFLAGS)' > $@
run.o: run.c tpla.h unicode/classes.h .engine
	$(CC) $(CFLAGS) $(OMP) $(ENGINE) -c run.c -o run.o
test.o: test.c run.c tpla.h unicode/classes.h .engine
	$(CC) $(CFLAGS) $(OMP) $(ENGINE) -Wno-unused-function -Wno-format-truncation -c test.c -o test.o
tpla.o: tpla.cu cuda/*.cuh tpla.h nonccl/nccl.h .nvccflags
	$(NVCC) $(NVCCFLAGS) -Xcompiler -Wall -c tpla.cu -o tpla.o
convert: convert.c tpla.h
	$(CC) $(CFLAGS) convert.c -o convert -lm

test: all
	./test

# The default model continues a prompt under MLA and under TPLA (g = the GPU count, 2 on the CPU),
# with the PCA transform (calibrated first, on models/calib.txt): about a minute in all on 2 CPU cores.
run: bin
	./run $(MODEL) -P tpla -T pca -i "def parse_args(argv):" -n 48 -t 0

# The sanitizer build: the CPU engine (no nvcc needed), convert and the tests with AddressSanitizer
# (leaks included) and UBSan, in asan/, where the test finds its run and convert. Every report goes
# to asan/report.PID, from the test and from every run and convert it starts; any report fails.
# tools/fuzz.sh uses the same build.
SAN = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
SAN_ENV = ASAN_OPTIONS=exitcode=66:log_path=$(CURDIR)/asan/report UBSAN_OPTIONS=exitcode=66:print_stacktrace=1:log_path=$(CURDIR)/asan/report
asan/run: run.c tpla.h unicode/classes.h
	@mkdir -p asan
	$(CC) $(CFLAGS) $(OMP) $(SAN) run.c -o asan/run -lm
asan/test: test.c run.c tpla.h unicode/classes.h
	@mkdir -p asan
	$(CC) $(CFLAGS) $(OMP) $(SAN) -DBIN='"asan/"' -Wno-unused-function -Wno-format-truncation test.c -o asan/test -lm
asan/convert: convert.c tpla.h
	@mkdir -p asan
	$(CC) $(CFLAGS) $(SAN) convert.c -o asan/convert -lm
asan: asan/run asan/test asan/convert
	@rm -f asan/report.*
	$(SAN_ENV) asan/test
	@if ls asan/report.* >/dev/null 2>&1; then cat asan/report.*; echo "asan: sanitizer reports above"; exit 1; fi
	@echo "asan: no sanitizer report"

clean:
	rm -rf run test convert *.o .engine .nvccflags asan
