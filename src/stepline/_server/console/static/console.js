/* stepline console: the live view follows a response's event log.
 *
 * It reads /console/responses/{id}/events (the same durable log that
 * GET /v1/responses/{id}?stream=true replays) with fetch, so every event type is
 * seen, in order, and a dropped connection resumes after the last sequence number
 * it saw. Nothing from the stream is ever inserted as HTML: only as text.
 * No build step; edit as is.
 */
"use strict";

(function () {
  const live = document.getElementById("live");
  if (!live) {
    return;
  }

  const TERMINAL = new Set(["response.completed", "response.failed", "response.incomplete"]);
  const RETRY_MS = 1000;
  const byId = (id) => document.getElementById(id);
  const view = {
    status: byId("live-status"),
    count: byId("live-count"),
    usage: byId("live-usage"),
    connection: byId("live-connection"),
    error: byId("live-error"),
    output: byId("live-output"),
    events: byId("live-events"),
  };
  const state = { last: -1, count: 0, done: false, items: new Map() };

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function shorten(text, limit) {
    const flat = String(text).replace(/\s+/g, " ");
    return flat.length <= limit ? flat : flat.slice(0, limit - 1) + "…";
  }

  function setConnection(name) {
    live.dataset.state = name;
    view.connection.textContent = name;
  }

  function setStatus(status) {
    if (!status) {
      return;
    }
    view.status.textContent = status;
    view.status.className = "status s-" + status;
    live.dataset.status = status;
  }

  function setUsage(usage) {
    if (usage) {
      view.usage.textContent =
        usage.input_tokens + " in / " + usage.output_tokens + " out";
    }
  }

  function showError(error) {
    if (!error) {
      return;
    }
    view.error.hidden = false;
    view.error.textContent = (error.code ? error.code + ": " : "") + (error.message || "");
  }

  // -- output items --------------------------------------------------------------

  function itemRecord(index, item) {
    let record = state.items.get(index);
    if (!record) {
      const li = element("li", "item");
      li.dataset.outputIndex = String(index);
      const head = element("div", "item-head");
      const type = element("span", "item-type");
      const name = element("span", "item-name");
      const status = element("span", "state");
      head.append(type, name, status);
      const args = element("pre", "item-args");
      const body = element("pre", "item-text");
      args.hidden = true;
      body.hidden = true;
      li.append(head, args, body);
      view.output.append(li);
      record = { li, type, name, status, args, body };
      state.items.set(index, record);
    }
    if (item) {
      drawItem(record, item);
    }
    return record;
  }

  function itemText(item) {
    if (item.type === "message") {
      return (item.content || []).map((part) => part.text || part.refusal || "").join("");
    }
    if (item.type === "reasoning") {
      return (item.summary || []).map((part) => part.text || "").join("\n");
    }
    if (typeof item.output === "string") {
      return item.output;
    }
    return null;
  }

  function drawItem(record, item) {
    record.li.dataset.type = item.type;
    record.type.textContent = item.type;
    record.name.textContent = item.name || item.role || "";
    if (item.status) {
      record.li.dataset.status = item.status;
      record.status.textContent = item.status;
      record.status.className = "state st-" + item.status;
    }
    if (typeof item.arguments === "string" && item.arguments) {
      record.args.hidden = false;
      record.args.textContent = item.arguments;
    }
    const text = itemText(item);
    if (text) {
      record.body.hidden = false;
      record.body.textContent = text;
    }
    if (item.error) {
      record.body.hidden = false;
      record.body.textContent = typeof item.error === "string" ? item.error : JSON.stringify(item.error);
    }
  }

  function appendTo(pre, text) {
    pre.hidden = false;
    pre.textContent += text;
  }

  // -- events --------------------------------------------------------------------

  function detailOf(event) {
    if (typeof event.delta === "string") {
      return shorten(event.delta, 80);
    }
    if (event.item) {
      return event.item.type + (event.item.name ? " " + event.item.name : "");
    }
    if (event.response) {
      return event.response.status;
    }
    if (event.error) {
      return event.error.code || event.error.message || "";
    }
    return "";
  }

  function logEvent(event) {
    const li = element("li");
    li.dataset.seq = String(event.sequence_number);
    li.dataset.type = event.type;
    li.append(
      element("span", "seq", event.sequence_number),
      element("span", "type", event.type),
      element("span", "detail", detailOf(event)),
    );
    view.events.append(li);
    state.count += 1;
    view.count.textContent = String(state.count);
  }

  function apply(event) {
    logEvent(event);
    const type = event.type;
    if (event.response) {
      setStatus(event.response.status);
      setUsage(event.response.usage);
      showError(event.response.error);
    }
    if (type === "response.output_item.added" || type === "response.output_item.done") {
      itemRecord(event.output_index, event.item);
    } else if (type === "response.output_text.delta" || type.endsWith("reasoning_text.delta")
      || type.endsWith("reasoning_summary_text.delta")) {
      appendTo(itemRecord(event.output_index).body, event.delta);
    } else if (type.endsWith("arguments.delta")) {
      appendTo(itemRecord(event.output_index).args, event.delta);
    } else if (type === "error") {
      showError(event.error);
    }
    if (TERMINAL.has(type)) {
      live.dataset.terminal = type;
    }
  }

  function handleBlock(block) {
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("data: ")) {
        data += line.slice(6);
      }
    }
    if (!data) {
      return;
    }
    if (data === "[DONE]") {
      state.done = true;
      return;
    }
    const event = JSON.parse(data);
    if (typeof event.sequence_number === "number") {
      if (event.sequence_number <= state.last) {
        return; // seen before a reconnect
      }
      state.last = event.sequence_number;
    }
    apply(event);
  }

  async function read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        return;
      }
      buffer += value;
      let end = buffer.indexOf("\n\n");
      while (end >= 0) {
        handleBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        end = buffer.indexOf("\n\n");
      }
    }
  }

  async function refused(reply) {
    let message = "the stream was refused (" + reply.status + ")";
    try {
      const envelope = await reply.json();
      message = envelope.error.message;
    } catch (_) {
      // not the error envelope: keep the status line
    }
    showError({ code: String(reply.status), message });
    setConnection("refused");
  }

  async function follow() {
    while (!state.done) {
      try {
        const reply = await fetch(live.dataset.events + "?after=" + state.last, {
          credentials: "same-origin",
          headers: { Accept: "text/event-stream" },
          cache: "no-store",
        });
        if (!reply.ok) {
          await refused(reply);
          return;
        }
        setConnection("streaming");
        await read(reply.body);
      } catch (_) {
        // the connection dropped: resume after the last event seen
      }
      if (!state.done) {
        setConnection("reconnecting");
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    }
    setConnection("done");
  }

  follow();
})();
