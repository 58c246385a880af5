#include "parallel.hpp"

#include <new>
#include <pthread.h>

namespace mi {
namespace {
thread_local bool inside_pool = false;
}

ThreadPool& ThreadPool::instance() {
    static ThreadPool pool;
    return pool;
}

ThreadPool::ThreadPool() {
    unsigned hw = std::thread::hardware_concurrency();
    start(hw == 0 ? 1 : static_cast<int>(hw));
    // A fork waits for the job in flight, so the child never copies workers in the middle of one. A fork from inside
    // a task goes ahead: that job cannot finish while the task waits, so taking submit_ there would deadlock.
    pthread_atfork([] { ThreadPool::instance().before_fork(); }, [] { ThreadPool::instance().after_fork_in_parent(); },
                   [] { ThreadPool::instance().after_fork_in_child(); });
}

// The prepare and parent handlers run on the forking thread, so inside_pool says the same to both.
void ThreadPool::before_fork() {
    if (!inside_pool) submit_.lock();
}

void ThreadPool::after_fork_in_parent() {
    if (!inside_pool) submit_.unlock();
}

// fork() copies only the calling thread: the workers are gone, and the locks and condition variables may have been
// held by them. The child forgets both without touching them (destroying a std::thread that was never joined
// terminates; joining a thread that does not exist hangs) and starts new workers on its next job.
void ThreadPool::after_fork_in_child() {
    new (&workers_) std::vector<std::thread>();   // the old vector's storage is leaked, once per fork
    new (&mutex_) std::mutex();
    new (&submit_) std::mutex();
    new (&wake_) std::condition_variable();
    new (&done_) std::condition_variable();
    body_ = nullptr;
    total_ = 0;
    next_ = 0;
    active_ = 0;
    parked_ = 0;
    generation_ = 0;
    stopping_ = false;
    error_ = nullptr;
    restart_ = threads_.load() > 1;
}

ThreadPool::~ThreadPool() { stop(); }

// Returns once every worker is parked on wake_: a thread still starting up may hold the allocator's lock (ASan's
// does, glibc's can), and a fork at that moment would hand the child a lock nobody will release.
void ThreadPool::start(int n) {
    threads_ = n;
    stopping_ = false;
    parked_ = 0;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { worker_loop(); });
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return parked_ == n - 1; });
}

void ThreadPool::stop() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
}

void ThreadPool::set_threads(int n) {
    std::lock_guard<std::mutex> submit(submit_);
    if (n == threads_.load() && !restart_) return;
    restart_ = false;
    stop();
    start(n);
}

void ThreadPool::run_tasks() {
    for (;;) {
        int64_t i = next_.fetch_add(1);
        if (i >= total_) return;
        try {
            (*body_)(i);
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!error_) error_ = std::current_exception();
            next_ = total_;  // stop handing out work
        }
    }
}

void ThreadPool::worker_loop() {
    inside_pool = true;
    uint64_t seen = 0;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        seen = generation_;
        if (++parked_ == threads_.load() - 1) done_.notify_all();
    }
    for (;;) {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
            if (stopping_) return;
            seen = generation_;
            ++active_;
        }
        run_tasks();
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (--active_ == 0) done_.notify_all();
        }
    }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& body) {
    if (n <= 0) return;
    if (inside_pool || n == 1 || threads_.load() == 1) {
        for (int64_t i = 0; i < n; ++i) body(i);
        return;
    }
    std::lock_guard<std::mutex> submit(submit_);
    if (restart_) {
        restart_ = false;
        start(threads_.load());
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        body_ = &body;
        total_ = n;
        next_ = 0;
        error_ = nullptr;
        ++generation_;
    }
    wake_.notify_all();
    inside_pool = true;
    run_tasks();
    inside_pool = false;
    std::exception_ptr error;
    {
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [&] { return active_ == 0 && next_.load() >= total_; });
        body_ = nullptr;
        error = error_;
        error_ = nullptr;
    }
    if (error) std::rethrow_exception(error);
}

}  // namespace mi
