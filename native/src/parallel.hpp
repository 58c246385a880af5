// A small persistent thread pool. We do not use OpenMP: libtorch brings its own libgomp into
// the same process, and two OpenMP runtimes fight over the cores.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mi {

class ThreadPool {
public:
    static ThreadPool& instance();

    int threads() const { return threads_.load(); }
    void set_threads(int n);

    // Calls body(i) for every i in [0, n), spread over the pool; the caller works too.
    // Rethrows the first exception a task threw. Nested calls run inline.
    void parallel_for(int64_t n, const std::function<void(int64_t)>& body);

    ~ThreadPool();

private:
    ThreadPool();
    void before_fork();
    void after_fork_in_parent();
    void after_fork_in_child();
    void start(int n);
    void stop();
    void worker_loop();
    void run_tasks();

    std::atomic<int> threads_{1};
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable done_;
    std::mutex submit_;  // one parallel_for at a time from outside the pool

    // The job in flight.
    const std::function<void(int64_t)>* body_ = nullptr;
    int64_t total_ = 0;
    std::atomic<int64_t> next_{0};
    int active_ = 0;
    int parked_ = 0;  // workers that reached their wait loop; start() waits for all of them
    uint64_t generation_ = 0;
    bool stopping_ = false;
    bool restart_ = false;  // in a forked child: the workers are gone, start new ones on the next job
    std::exception_ptr error_;
};

// Convenience: parallel_for over the process-wide pool.
inline void parallel_for(int64_t n, const std::function<void(int64_t)>& body) {
    ThreadPool::instance().parallel_for(n, body);
}

}  // namespace mi
