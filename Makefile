# tpla: `make` builds ./run, ./convert and ./test; `make run` runs the default model; `make test` tests.
CC = gcc
CFLAGS = -O3 -Wall -Wextra -std=gnu11 -fopenmp
NVCC = nvcc
NVCCFLAGS = -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a
MODEL = models/tiny.bin

# The GPU engine is built when nvcc is found; without it the build is CPU only, and says so.
NVCC_PATH := $(shell command -v $(NVCC) 2>/dev/null)
ifneq ($(NVCC_PATH),)
CUDA_HOME ?= $(abspath $(dir $(NVCC_PATH))/..)
GPU_OBJ = tpla.o
CFLAGS += -DTPLA_CUDA
LDLIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lnccl -lcudart -lstdc++ -lpthread
else
$(info nvcc not found: building the CPU-only engine; -d gpu and -m bench are unavailable)
endif
LDLIBS += -lm

.PHONY: all bin test run clean
all: bin convert test-bin

# ./run and ./test are relinked by `make` (cheap); the phony targets run and test then execute them.
bin: run.o $(GPU_OBJ)
	$(CC) $(CFLAGS) run.o $(GPU_OBJ) -o run $(LDLIBS)
test-bin: test.o $(GPU_OBJ)
	$(CC) $(CFLAGS) test.o $(GPU_OBJ) -o test $(LDLIBS)
run.o: run.c tpla.h unicode/classes.h
	$(CC) $(CFLAGS) -c run.c -o run.o
test.o: test.c run.c tpla.h unicode/classes.h
	$(CC) $(CFLAGS) -Wno-unused-function -Wno-format-truncation -c test.c -o test.o
tpla.o: tpla.cu tpla.h
	$(NVCC) $(NVCCFLAGS) -Xcompiler -Wall -c tpla.cu -o tpla.o
convert: convert.c tpla.h
	$(CC) -O2 -Wall -Wextra -std=gnu11 convert.c -o convert -lm

test: all
	./test

# The default model continues a prompt under MLA and under TPLA (g = the GPU count, 2 on the CPU),
# with the PCA transform (calibrated first, on models/calib.txt: half a minute on a CPU).
run: bin
	./run $(MODEL) -P tpla -T pca -i "def parse_args(argv):" -n 48 -t 0

clean:
	rm -f run test convert *.o
