// xybench: the benchmark programs of docs/benchmarks.md, one mode per process (bench/run.py starts them).
//
//   xybench xy-pub | xy-sub       events through xymqtt (--store lmdb|sqlite --durability fsync|process)
//   xybench paho-pub | paho-sub   events through raw Paho C++ (--qos 1|2; no persistence, or Paho's records
//                                 in a map with --paho-persistence memory)
//   xybench serve | call          commands through xymqtt (serve: --delay-ms D --concurrency N; call: --outstanding K)
//   xybench paho-echo | paho-ping raw Paho QoS 2 ping-pong
//   xybench disk                  synced-commit rates of the stores and of fdatasync on this filesystem
//   xybench memory                RSS while 1,000,000 events are queued offline, then drained
//   xybench promise-cost          memory per pending publish bookkeeping, measured alone
//   xybench recover-fill | recover-run   restart with a full outbox
// Every mode prints its figures as one line "RESULT {json}".
#include <csignal>
#include <exception>
#include <iostream>
#include <string>

#include "common.h"

namespace bench {

int events_main(const std::string& mode, const args& a);
int commands_main(const std::string& mode, const args& a);
int disk_main(const args& a);
int memory_main(const std::string& mode, const args& a);

void block_stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void wait_stop_signal() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int sig = 0;
    sigwait(&set, &sig);
}

}  // namespace bench

int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << "usage: xybench MODE [--flag value ...] (see bench/main.cpp)\n";
        return 2;
    }
    const std::string mode = argv[1];
    try {
        bench::args a(argc, argv);
        if (mode == "xy-pub" || mode == "xy-sub" || mode == "paho-pub" || mode == "paho-sub")
            return bench::events_main(mode, a);
        if (mode == "serve" || mode == "call" || mode == "paho-echo" || mode == "paho-ping")
            return bench::commands_main(mode, a);
        if (mode == "disk") return bench::disk_main(a);
        if (mode == "memory" || mode == "promise-cost" || mode == "recover-fill" || mode == "recover-run")
            return bench::memory_main(mode, a);
        std::cerr << "unknown mode " << mode << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "xybench " << mode << ": " << e.what() << std::endl;
        return 1;
    }
}
