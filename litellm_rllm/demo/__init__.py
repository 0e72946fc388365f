"""Wire-format upstream servers: a fake vLLM that speaks vLLM's OpenAI-compatible format byte
for byte, with token ids and logprobs anyone can compute in advance.

Why it is in the package: it is one implementation for two users. The test suite serves it
(``tests/upstreams/`` adds the OpenAI and Anthropic fakes and pytest fixtures on top of it), and
``litellm-rllm demo-upstream`` serves it for the quick start, so a newcomer's first trace carries
real prompt ids, completion ids and logprobs without a GPU.

Modules: ``common`` (fake tokenizer, replies, failure triggers, the app base), ``vllm`` (the
vLLM server), ``responses_api`` (``/v1/responses`` pieces), ``server`` (uvicorn on 127.0.0.1, in
a thread or as a process), ``upstream`` (the ``demo-upstream`` command).

Deterministic rules (helpers in ``litellm_rllm.demo.common``), so a test can compute every id and
logprob it expects:

* Word id: ``word_id(w) = zlib.crc32(w.encode()) % 50000``. Special ids: ``<|im_start|>`` 151644,
  ``<|im_end|>`` 151645 (= EOS), ``<tool_call>`` 151657, ``</tool_call>`` 151658, ``"\\n"`` 198.
* Chat prompt ids (``chat_prompt_token_ids(messages, tools)``): if tools,
  ``[151644, word_id("tools"), 198, *ids(tool names), 151645, 198]``; then per message
  ``[151644, *ids(role), 198, *ids(text), 151645, 198]`` where text is the content (text parts
  joined by spaces; assistant tool calls add `` name arguments``); then ``[151644,
  word_id("assistant"), 198]``. ``ids(s) = [word_id(w) for w in s.split()]``.
  Completions prompt ids: ``ids(prompt)``, or the prompt itself when it is a list of ints.
  A model name with ``template-exact`` renders assistant messages as the ids the server sampled
  (so every prompt extends the previous prompt + completion); ``template-retokenize`` renders
  them differently (drift): ``common.assistant_ids``. ``FakeVLLM.token_log`` records the ids.
* Reply: the server's ``reply`` text split on whitespace, else ``tok0 .. tok{K-1}`` (``tokens=K``,
  default 8; ``tokens-K`` in the model name overrides). Choice ``i > 0`` appends ``#i`` to each
  word. Content = the words joined by single spaces. Completion ``token_ids`` =
  ``[word_id(w) for w in words] + [151645]`` (vLLM only; OpenAI/Anthropic count the words only).
  ``max_tokens`` cuts that list (``finish_reason: "length"``, no EOS). ``stop`` / ``stop_token_ids``
  match whole words: the matching word's token is kept in ids/logprobs, adds no text, and
  ``stop_reason`` is the string or id.
* Logprob of completion token at position ``j`` (0-based, EOS included) of choice ``i``:
  ``-(((i + j) % 64) + 1) / 64`` (exact in float32). Logprob token strings: the first word, then
  ``" " + word``; EOS is ``"<|im_end|>"``. ``top_logprobs=k`` (chat) lists ``k`` entries: the sampled
  token, then ``" alt1" .. " alt{k-1}"`` with logprob ``sampled - r``. Completions ``logprobs=k``
  lists the sampled token plus ``" alt1" .. " altk"``.
* Tool call (``tools`` + "weather" in the last user message): text
  ``<tool_call>\\n{"name": "<first tool>", "arguments": {"location": "Paris"}}\\n</tool_call>``
  as 11 tokens + EOS (``tool_generation(name).token_ids``).
* Stream steps: the first token alone, then ``tokens_per_step`` (or the request's
  ``stream_interval``) tokens per chunk; the last step carries ``finish_reason``.
* Responses API (``POST /v1/responses``, vLLM and OpenAI fakes): ``instructions`` + ``input`` render
  to chat messages (``responses_api``), so reply, ids and logprobs equal the chat
  endpoint's for those messages (choice 0). vLLM returns ids only with ``enable_response_messages``.
"""
