"""Elections: the part of ``RaftCore`` that campaigns, votes and takes over (a mixin, as
``replication.py`` is; the state is RaftCore's).

Rules of this module (Raft thesis 3.4, 4.2.3 and 9.6; etcd-io/raft's PreVote and CheckQuorum):

* With ``pre_vote`` a server first asks whether it *could* win, at ``term + 1`` but without
  changing its own term or vote; only a won pre-vote starts the real election. A server that
  was cut off therefore cannot inflate the term and depose a healthy leader when it comes back.
* A voter grants a (pre-)vote only to a log at least as up to date as its own, at most one real
  vote per term, and (with ``check_quorum``) not while it has heard from a leader within the
  minimum election timeout (``RaftCore._step``): a flapping link between one follower and the
  leader makes that follower ask, and the others refuse.
* A follower that has reason to believe its leader is gone (the caller saw the leader's
  connection drop) may ``forget_leader()``: it then grants pre-votes at once, and
  ``campaign()`` starts its own pre-vote without waiting out the election timeout. Both only
  shorten waits; neither lets anyone win without a majority of up-to-date voters.
* A new leader appends a no-op of its own term first: entries of earlier terms commit with it
  (never by counting replicas, figure 8), and ReadIndex waits for it.
"""

from __future__ import annotations

import logging

from protocols.raft.messages import ENTRY_NOOP, Entry, RequestVote, VoteResponse
from protocols.raft.progress import LOST, WON, Progress, granted_votes, vote_result
from protocols.raft.ready import CANDIDATE, LEADER, PRE_CANDIDATE

logger = logging.getLogger("agentflow.raft")


def campaign_rank(voters: list[str], me: str, lost_leader: str | None) -> int:
    """This voter's place among the voters other than the leader that was lost: followers told at
    the same moment that their leader is gone campaign one after another, in this order, so that
    they do not split the vote (each would vote for itself and none reach a majority)."""
    others = sorted(v for v in voters if v != lost_leader)
    return others.index(me) if me in others else len(others)


class Election:
    """RaftCore's election methods (a mixin: the state is RaftCore's)."""

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            # A pre-candidate keeps its term and vote: a partitioned server must not inflate the
            # term and disrupt the cluster when it comes back.
            self._reset(self._term)
            self._role = PRE_CANDIDATE
            vote_term = self._term + 1
            logger.debug("[raft] Node %s starting pre-vote for term %d", self._id, vote_term)
        else:
            self._reset(self._term + 1)
            self._vote = self._id
            self._role = CANDIDATE
            vote_term = self._term
            logger.info("[raft] Node %s starting election for term %d", self._id, vote_term)
        self._votes = {self._id: True}
        if vote_result(self._members.voters, self._votes) == WON:
            self._on_election_won()
            return
        last_index, last_term = self._log.last_index, self._log.last_term
        for voter in self._members.voters:
            if voter != self._id:
                self._send(RequestVote(self._id, voter, vote_term, last_index, last_term,
                                       pre_vote, transfer))

    def _on_election_won(self) -> None:
        if self._role == PRE_CANDIDATE:
            self._campaign(pre_vote=False, transfer=False)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        votes = granted_votes(self._members.voters, self._votes)
        self._reset(self._term)
        self._role = LEADER
        self._leader_id = self._id
        next_index = self._log.last_index + 1
        for peer in self._peers():
            self._progress[peer] = Progress(next_index)
        # The no-op commits the entries of earlier terms (they cannot be committed by counting,
        # figure 8) and confirms the commit index for ReadIndex; no conf change before it commits.
        self._log.append(Entry(self._term, next_index, ENTRY_NOOP, b""))
        self._pending_conf_index = next_index
        logger.info("[raft] Node %s became Leader for term %d (votes: %d/%d)",
                    self._id, self._term, votes, len(self._members.voters))
        self._broadcast_append()

    def _handle_vote_request(self, m: RequestVote) -> None:
        can_vote = (self._vote == m.src
                    or (self._vote is None and self._leader_id is None)
                    or (m.pre_vote and m.term > self._term))
        log = self._log
        up_to_date = (m.last_term > log.last_term
                      or (m.last_term == log.last_term and m.last_index >= log.last_index))
        if can_vote and up_to_date:
            # Answer at the requested term: a granted pre-vote must count for that term.
            self._send(VoteResponse(self._id, m.src, m.term, True, m.pre_vote))
            if not m.pre_vote:
                self._vote = m.src
                self._election_elapsed = 0
        else:
            self._send(VoteResponse(self._id, m.src, self._term, False, m.pre_vote))

    def _handle_vote_response(self, m: VoteResponse) -> None:
        if self._role == PRE_CANDIDATE and m.pre_vote:
            if m.granted and m.term != self._term + 1:
                self._count("stale_vote_response")
                return
        elif self._role == CANDIDATE and not m.pre_vote and m.term == self._term:
            pass
        else:
            self._count("stale_vote_response")
            return
        if m.src in self._members.voters and m.src not in self._votes:
            self._votes[m.src] = m.granted
        outcome = vote_result(self._members.voters, self._votes)
        if outcome == WON:
            self._on_election_won()
        elif outcome == LOST:
            self._become_follower(self._term, None)
