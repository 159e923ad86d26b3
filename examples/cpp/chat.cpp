// chat.cpp: a small RAII wrapper over the C API, and 4 threads that each submit a chat while the
// background engine runs; each prints its answer.
//
//   c++ -std=c++17 chat.cpp $(pkg-config --cflags --libs ember) -o chat
//   ./chat MODEL.gguf [MAX_TOKENS]
//
// EMBER_THREADS=N sets the compute threads (default: one per physical core).
#include <ember.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace ember {

// A failed call: the result code and the library's message.
class Error : public std::runtime_error {
  public:
    Error(ember_result code, const std::string &what)
        : std::runtime_error(std::string(ember_result_str(code)) + ": " + what), code(code) {}
    ember_result code;
};

inline void check(ember_result r) {
    if (r != EMBER_OK) throw Error(r, ember_last_error());
}

struct Message {
    std::string role, content;
};

// A submitted request; released when it goes out of scope.
class Request {
  public:
    Request(const ember_runtime *rt, ember_request_id id) : rt_(rt), id_(id), live_(true) {}
    Request(Request &&o) noexcept : rt_(o.rt_), id_(o.id_), live_(std::exchange(o.live_, false)) {}
    Request(const Request &) = delete;
    Request &operator=(const Request &) = delete;
    ~Request() {
        if (live_) ember_release(rt_, id_);
    }

    // Blocks until the request finishes; returns its whole text.
    std::string text(ember_finish_reason *reason = nullptr) {
        std::string out;
        std::vector<char> buf(64);
        for (;;) {
            size_t len = 0;
            ember_finish_reason fin = EMBER_FINISH_NONE;
            ember_result r = ember_next_text(rt_, id_, EMBER_WAIT_FOREVER, buf.data(), buf.size(),
                                             &len, &fin);
            if (r == EMBER_ERR_BUFFER_TOO_SMALL) {
                buf.resize(len + 1);  // len: the size needed, without the NUL
                continue;
            }
            check(r);
            out.append(buf.data(), len);
            if (fin != EMBER_FINISH_NONE) {
                if (reason) *reason = fin;
                return out;
            }
        }
    }

  private:
    const ember_runtime *rt_;
    ember_request_id id_;
    bool live_;  // false once moved from
};

// A loaded model with its engine; freed (engine stopped, threads joined) when it goes out of
// scope.
class Runtime {
  public:
    Runtime(const std::string &model, const ember_config &config) {
        ember_runtime *rt = nullptr;
        check(ember_runtime_new(model.c_str(), &config, &rt));
        rt_.reset(rt);
    }
    void start() { check(ember_start(rt_.get())); }
    void stop() { check(ember_stop(rt_.get())); }

    Request chat(const std::vector<Message> &messages, const ember_params &params) const {
        std::vector<ember_chat_message> msgs;
        for (const auto &m : messages) msgs.push_back({m.role.c_str(), m.content.c_str()});
        ember_request_id id = 0;
        check(ember_submit_chat(rt_.get(), msgs.data(), msgs.size(), &params, &id));
        return Request(rt_.get(), id);
    }

    ember_stats stats() const {
        ember_stats s;
        check(ember_get_stats(rt_.get(), &s));
        return s;
    }

  private:
    struct Free {
        void operator()(ember_runtime *rt) const { ember_runtime_free(rt); }
    };
    std::unique_ptr<ember_runtime, Free> rt_;
};

}  // namespace ember

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " MODEL.gguf [MAX_TOKENS]\n";
        return 2;
    }
    try {
        ember_config config = ember_config_default();
        config.kv_bytes = 64u << 20;
        if (const char *t = std::getenv("EMBER_THREADS")) config.threads = std::atoi(t);
        ember::Runtime rt(argv[1], config);
        rt.start();

        ember_params params = ember_params_default();
        params.max_tokens = argc > 2 ? std::atoi(argv[2]) : 48;
        const std::vector<std::string> questions = {
            "What is the capital of France?",
            "Name a primary color.",
            "What is 2 + 2?",
            "Say hello in Spanish.",
        };
        std::mutex print;
        int failed = 0;
        std::vector<std::thread> threads;
        for (size_t i = 0; i < questions.size(); i++) {
            threads.emplace_back([&, i] {
                try {
                    ember::Request req = rt.chat(
                        {{"system", "You are a concise assistant."}, {"user", questions[i]}},
                        params);
                    ember_finish_reason reason = EMBER_FINISH_NONE;
                    std::string answer = req.text(&reason);
                    std::lock_guard<std::mutex> lock(print);
                    std::cout << "[" << i << "] Q: " << questions[i] << "\n    A: " << answer
                              << "\n";
                    if (reason != EMBER_FINISH_EOS && reason != EMBER_FINISH_LENGTH) failed++;
                } catch (const std::exception &e) {
                    std::lock_guard<std::mutex> lock(print);
                    std::cerr << "[" << i << "] error: " << e.what() << "\n";
                    failed++;
                }
            });
        }
        for (auto &t : threads) t.join();
        ember_stats s = rt.stats();
        rt.stop();
        std::cerr << "[" << s.tokens_generated << " tokens in " << s.steps << " steps, "
                  << s.generated_tok_s << " tok/s; blocks used at end: " << s.blocks_used
                  << "]\n";
        return failed == 0 && s.blocks_used == 0 ? 0 : 1;
    } catch (const std::exception &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
